"""The kernel-facing bottom of streams-run: architecture tables, seccomp, sockaddrs, ptrace.

Each module only imports the ones below it; the supervisor sits on top of all four.
"""
