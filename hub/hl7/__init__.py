"""HL7v2 for fhirhub: parse, map to FHIR transaction Bundles, ACK, outbound (all pure).

* :func:`hub.hl7.parse.parse`, :func:`hub.hl7.parse.split_messages`
* :class:`hub.hl7.mapping.MappingSet` (``mappings/``), :func:`hub.hl7.convert.convert`
* :func:`hub.hl7.ack.build_ack`, :func:`hub.hl7.ack.ack_code_for`
* :func:`hub.hl7.outbound.to_v2`
* :mod:`hub.hl7.tools` (map_file, run_golden_tests, diff_bundles, replay)
"""
