"""The HL7v2 message store: every message received or sent over MLLP, with its ACK.

One row per message and direction:

* inbound (``direction = 'in'``): stored durably *before* it is parsed or acknowledged, then
  updated with its outcome (``applied`` / ``error`` / ``rejected``), the ACK sent, the
  resources it produced and (compressed) the transaction Bundle it became. A repeated
  MSH-10 from the same sender on the same connector finds this row (``uq_hl7_message_dedup``)
  and is acknowledged without being applied again (``duplicates`` counts them).
* outbound (``direction = 'out'``): the durable queue of an ``mllp-sender`` connector
  (``queued`` -> ``sent``, or ``dead`` after the retries), with the ACK that came back.

Instants are integer microseconds (UTC), as everywhere in the store. ``control_id`` is NULL
when a message has none, so such messages never collide on the dedup key.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint

from hub.store.tables import PK, metadata

# inbound: received -> applied | error | rejected      outbound: queued -> sent | dead
IN_STATUSES = ("received", "applied", "error", "rejected")
OUT_STATUSES = ("queued", "sent", "dead")
ACK_DELIVERIES = ("undelivered", "redelivered")  # inbound application ACKs (enhanced mode) that missed their connection

message_t = Table(
    "hl7_message",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("direction", String(3), nullable=False),  # in | out
    Column("connector", String(64), nullable=False),
    Column("sender", String(200), nullable=False),  # MSH-3/MSH-4 as sent ("APP/FACILITY")
    Column("receiver", String(200), nullable=False),  # MSH-5/MSH-6
    Column("control_id", String(200), nullable=True),  # MSH-10 (NULL when missing)
    Column("message_type", String(32), nullable=False),  # MSH-9.1^MSH-9.2, e.g. ADT^A01 ("" when unreadable)
    Column("status", String(16), nullable=False),
    Column("ack_code", String(2), nullable=True),  # MSA-1 of the (application) ACK
    Column("error_code", String(64), nullable=True),  # stable error class, e.g. HL7-MAP-REQUIRED
    Column("error_location", String(64), nullable=True),  # ERR-2, e.g. IN1^1^4
    Column("received", BigInteger, nullable=False),  # stored at (µs)
    Column("processed", BigInteger, nullable=True),  # outcome known at (µs)
    Column("attempts", Integer, nullable=False, default=0),  # processing / sending attempts
    Column("duplicates", Integer, nullable=False, default=0),  # repeats of this MSH-10 acknowledged
    Column("next_attempt", BigInteger, nullable=True),  # outbound: not before (µs)
    Column("peer", String(100), nullable=True),  # remote address
    Column("patient_key", String(300), nullable=True),  # system|value of the patient (ordering key)
    Column("source", String(200), nullable=True),  # outbound: the change that caused it (Type/id/_history/v)
    Column("raw", LargeBinary, nullable=False),  # the message bytes exactly as received / sent
    Column("raw_hash", LargeBinary(16), nullable=True),
    Column("ack", LargeBinary, nullable=True),  # the ACK sent (inbound) or received (outbound)
    Column("resources", Text, nullable=True),  # space-separated Type/id/_history/v written
    Column("bundle", LargeBinary, nullable=True),  # zlib(JSON) of the transaction Bundle committed
    Column("detail", Text, nullable=True),  # error text (positions and codes only, never values)
    # inbound, enhanced mode: NULL (sent, or not asked for), "undelivered" (the sender's connection was gone when the
    # application ACK was to go out: it is sent when that sender connects again), "redelivered" (sent later)
    Column("ack_delivery", String(16), nullable=True),
    UniqueConstraint("direction", "connector", "sender", "control_id", name="uq_hl7_message_dedup"),
    Index("ix_hl7_message_queue", "direction", "connector", "status", "pk"),
    Index("ix_hl7_message_received", "received"),
    Index("ix_hl7_message_error", "error_code"),
    Index("ix_hl7_message_ack_delivery", "ack_delivery", "connector", "sender"),
)
