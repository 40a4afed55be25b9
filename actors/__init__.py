"""The tierbatch runtime: three pykka actors and the ``Runtime`` facade.

Thin shells around the policy objects of ``tierbatch.policies``; every piece
of mutable state lives inside exactly one actor and changes only there.
"""
