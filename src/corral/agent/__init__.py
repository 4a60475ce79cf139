"""The node agent: runs on each node, dials the dispatcher's hub, runs real OS processes.

Owns spawning and killing processes in their own process groups (``launcher``), their log
files (``logs``), the on-disk records of live children and the state-directory lock
(``pidfiles``), the connection loop and inventory (``session``), how it reaches a
dispatcher (``dialing``: addresses, backoff, socket options) and the command line
(``main``; ``python -m corral.agent``). It imports ``corral.wire`` and the standard library
only, never the dispatcher, the API or the CLI, so it stays light and starts fast.
"""
