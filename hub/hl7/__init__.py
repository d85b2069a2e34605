"""HL7v2 for fhirhub.

Pure parts (no I/O):

* :func:`hub.hl7.parse.parse`, :func:`hub.hl7.parse.split_messages`
* :class:`hub.hl7.mapping.MappingSet` (``mappings/``), :func:`hub.hl7.convert.convert`
* :func:`hub.hl7.ack.build_ack`, :func:`hub.hl7.ack.ack_code_for`
* :func:`hub.hl7.outbound.to_v2`
* :mod:`hub.hl7.tools` (map_file, run_golden_tests, diff_bundles, replay)
* :mod:`hub.hl7.mllp` (MLLP framing)

Running parts:

* :mod:`hub.hl7.connectors` - ``connectors/*.yaml``, checked with jsonschema
* :mod:`hub.hl7.store` / :mod:`hub.hl7.tables` - the message store (``hl7_message``), group commit
* :mod:`hub.hl7.pipeline` - parse, filter, map, commit through ``FhirRouter.dispatch``, ACK
* :mod:`hub.hl7.known` - remembered conditional look-ups (smaller transactions)
* :mod:`hub.hl7.listener` - the ``mllp-listener`` service; :mod:`hub.hl7.sender` - the ``mllp-sender`` service
* :mod:`hub.hl7.service` - ``services(hub)`` and the shared runtime (``send_v2`` for workflows)
* :mod:`hub.hl7.admin`, :mod:`hub.hl7.api`, :mod:`hub.hl7.cli` - the message store over HTTP and the CLI
"""
