"""The tierbatch bench harness: tierbatch against the quota bound and the alternatives.

Run ``python -m bench.run --quick`` (a smoke run of under a minute) or
``python -m bench.run --full``, then ``python -m bench.report`` to render the
Markdown tables and PNG plots. Everything talks real HTTP to the local
Gemini-compatible server on 127.0.0.1, run in its own process.
"""
