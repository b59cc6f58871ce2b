"""The local gateway: a pair of stream access points that speak the Globus Streams LAN protocol."""
