"""The node agent: runs on each node, dials the dispatcher's hub, runs real OS processes.

Owns running and killing processes in their own process groups (``launcher``), through a
spawn helper process that starts and reaps them (``spawner``, linked by ``spawn_link``),
their log files (``logs``), the on-disk records of live children and the state-directory
lock (``pidfiles``), the connection loop and inventory (``session``) and the command line
(``main``; ``python -m corral.agent``). It imports ``corral.wire`` and the standard library
only, never the dispatcher, the API or the CLI, so it stays light and starts fast.
"""
