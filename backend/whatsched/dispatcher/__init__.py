"""The dispatcher (`whatsched worker`): sends due messages through the WhatsApp bridge.

One module per operation, like graphile-worker: `claim` (start due messages, take a batch of
deliveries under a lease), `deliver` (send a batch through the bridge), `complete` (record the
sends the bridge accepted and finish messages), `fail` (retry with backoff or fail), `rescue`
(the housekeeping safety net), `pacing` (spacing, caps, quiet hours), `recurrence` (the next
occurrence of a recurring message), `notify` (the user's notifications), `numbers` (the numbers,
their bridges and session commands), `watch` (restart a frozen or bloated number) and `worker`
(the loop).
The database does the set work in the SQL functions of migration 20261128001300.
"""
