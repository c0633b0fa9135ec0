"""Real time: the guide's WebSocket protocol, fed from Postgres NOTIFY on channel 'realtime'.

`hub` owns the one LISTEN connection per API process and routes events to sockets; `sockets` owns
one socket's bounded send queue; `session` speaks the protocol with one client; `protocol` names
the frames; `snapshots` reads a message's current state. Its tunables are whatsched.config.RealtimeSettings
(Settings.realtime).
"""

from whatsched.realtime.hub import Hub

__all__ = ["Hub"]
