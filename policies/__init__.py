"""Pure logic and domain types of tierbatch.

Nothing here reads a clock, starts a thread or touches I/O: every decision
that depends on time takes ``now`` as a parameter, so the same objects run
unchanged inside pykka actors, inside Ray actors, and inside hypothesis state
machines. Calendar logic (priority's publication times, the quota's Pacific
day) is on wall-clock epoch seconds; the quota's windows and deadlines are on
steady time, with the wall clock's offset passed in where a day is needed.
"""
