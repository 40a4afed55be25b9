"""Pure logic and domain types of tierbatch.

Nothing here reads a clock, starts a thread or touches I/O: every decision
that depends on time takes ``now`` (seconds since the Unix epoch, UTC) as a
parameter, so the same objects run unchanged inside pykka actors, inside Ray
actors, and inside hypothesis state machines.
"""
