"""The Globus control plane: login, tunnels, LAN secrets and contact lookups.

Modules, from the bottom up:

- ``errors``: this package's error classes and the one place that turns a
  globus-sdk exception into one line and a documented exit code.
- ``auth``: the client ID, the ``GlobusApp`` (native-app login that works on a
  headless node, or client credentials for service accounts) and its tokens.
- ``tunnels``: reading a tunnel, waiting for its listener, registering a
  listener contact, finding an access point's GCS Manager.
- ``lansecrets``: asking a GCS Manager for a side's LAN secret.
- ``environment``: ``initialize`` for both sides, built on the above, writing
  the conf files of :mod:`streams_trace.conf`.
- ``lookup``: ``current_conf``, the contact lookup everything else calls before
  connecting; it imports globus_sdk only when a contact is stale.

Nothing here imports globus_sdk at import time of this package.
"""
