"""The streams-run supervisor: launch, one wait loop, and the redirect policy on top.

``loop`` (file descriptors and timers) and ``launch`` (fork, seize, filter, exec)
at the bottom; ``tracer`` owns the process/thread table and the single
``waitpid(-1, __WALL)`` loop; ``redirect`` and ``dns`` decide what happens at a
stopped connect, bind, accept or name lookup.
"""

SUPERVISOR_FAILED = 125  # exit status when streams-run itself fails (not the program)
