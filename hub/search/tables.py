"""Search index tables, one per parameter type (owned by the search module).

Every row belongs to one resource (``resource_pk``; rows are deleted and
rewritten on each update and dropped on delete, so a deleted resource never
matches) and one (resource type, parameter): ``hash_identity`` is a signed
64-bit hash of the pair, as in HAPI FHIR, so the type never needs a column.

Derived identities reuse the same tables (see :meth:`BoundParam.sub_identity`):

* ``code:text`` rows in ``idx_string`` hold CodeableConcept.text/Coding.display
  for the token ``:text`` modifier (so it gets the string prefix index);
* ``subject:identifier`` rows in ``idx_token`` hold Reference.identifier;
* ``identifier:of-type`` rows in ``idx_token`` hold (type system, type code|value);
* composite parameters store each component under ``code$0``, ``code$1``… in
  its component's table, with ``grp`` numbering the item the components came
  from (1, 2, …); non-composite rows have ``grp`` 0. A composite query joins
  its components on (resource_pk, grp), so ``code-value-quantity`` matches a
  code and a value from the *same* Observation or component.

Indexes, chosen with the queries in mind:

* ``(resource_pk, hash_identity)`` on every table: rewriting a resource's rows,
  and the correlated look-ups of ``:missing``, ``:not`` and ``_sort`` keys.
* string ``(hash_identity, value_norm)``: the default starts-with search is a
  range scan ``value_norm >= 'abc' AND value_norm < 'abd'`` (the column uses
  byte order, "C" collation on PostgreSQL, so the range is exactly the prefix);
  ``:exact`` narrows with the same index then compares ``value_exact``.
* token ``(hash_sys_code, resource_pk)`` and ``(hash_code, resource_pk)``: a
  ``system|code`` or bare ``code`` search is one index probe per OR value,
  covering (no table visit) for the ``IN (SELECT resource_pk …)`` shape.
  ``system|`` (any code) and ``|code`` use ``hash_sys`` / ``hash_sys_code``.
* reference ``(hash_identity, target_id, target_type)``: ``subject=Patient/1``,
  chains (``target_id IN (SELECT res_id …)``) and ``_revinclude``/``_has``
  (given target ids, find the referring rows).
* date ``(hash_identity, low, high)``, number/quantity ``(hash_identity, low)``,
  uri ``(hash_identity, uri)``.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Engine, Float, Index, Integer, String, Table, Text

from hub.store.tables import PK, metadata, resource_t

# byte-order collation on PostgreSQL so that prefix ranges and LIKE behave as on SQLite
_CText = String(255).with_variant(String(255, collation="C"), "postgresql")
_CUri = String(512).with_variant(String(512, collation="C"), "postgresql")
_CRef = String(512).with_variant(String(512, collation="C"), "postgresql")


def _common(name: str, *cols: Column, indexes: tuple[tuple[str, ...], ...] = ()) -> Table:
    t = Table(
        name,
        metadata,
        Column("pk", PK, primary_key=True, autoincrement=True),
        Column("resource_pk", BigInteger, nullable=False),
        Column("hash_identity", BigInteger, nullable=False),
        Column("grp", Integer, nullable=False, default=0),
        *cols,
    )
    Index(f"ix_{name}_resource", t.c.resource_pk, t.c.hash_identity)
    for i, cols_ in enumerate(indexes):
        Index(f"ix_{name}_{i}", *(t.c[c] for c in cols_))
    return t


string_t = _common(
    "idx_string",
    Column("value_norm", _CText, nullable=False),
    Column("value_exact", Text, nullable=False),
    indexes=(("hash_identity", "value_norm"),),
)

token_t = _common(
    "idx_token",
    Column("system", String(512), nullable=True),
    Column("code", String(512), nullable=True),
    Column("hash_code", BigInteger, nullable=False),  # h(type, param, code)
    Column("hash_sys", BigInteger, nullable=False),  # h(type, param, system)
    Column("hash_sys_code", BigInteger, nullable=False),  # h(type, param, system, code)
    indexes=(("hash_sys_code", "resource_pk"), ("hash_code", "resource_pk"), ("hash_sys", "resource_pk")),
)

reference_t = _common(
    "idx_reference",
    Column("target_type", String(64), nullable=True),  # NULL for absolute / canonical URLs
    Column("target_id", _CRef, nullable=False),  # the id, or the whole URL
    indexes=(("hash_identity", "target_id", "target_type"),),
)

date_t = _common(
    "idx_date",
    Column("low", BigInteger, nullable=False),  # µs UTC, inclusive
    Column("high", BigInteger, nullable=False),  # µs UTC, inclusive
    indexes=(("hash_identity", "low", "high"),),
)

number_t = _common(
    "idx_number",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("hash_identity", "low"),),
)

quantity_t = _common(
    "idx_quantity",
    Column("system", String(512), nullable=True),
    Column("code", String(128), nullable=True),
    Column("unit", String(128), nullable=True),
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    indexes=(("hash_identity", "low"),),
)

uri_t = _common(
    "idx_uri",
    Column("uri", _CUri, nullable=False),
    indexes=(("hash_identity", "uri"),),
)

INDEX_TABLES: tuple[Table, ...] = (string_t, token_t, reference_t, date_t, number_t, quantity_t, uri_t)

TABLE_BY_TYPE: dict[str, Table] = {
    "string": string_t,
    "token": token_t,
    "reference": reference_t,
    "date": date_t,
    "number": number_t,
    "quantity": quantity_t,
    "uri": uri_t,
}

# Listing a type in ``_lastUpdated`` or ``pk`` order (search with no parameters,
# ``_sort=_lastUpdated``, keyset paging) needs these on the resource table.
# (Requested from hub/store: see the search report. Declared here so that
# ``upgrade()`` creates them; they only add indexes.)
Index("ix_resource_type_updated", resource_t.c.res_type, resource_t.c.last_updated)
Index("ix_resource_type_pk", resource_t.c.res_type, resource_t.c.pk)


def create_tables(engine: Engine) -> None:
    """Create the index tables and the resource indexes above if missing.

    For tests and for databases whose Alembic history does not yet hold the
    search migration (the lead generates it with ``hub.store.schema.revision``).
    """
    metadata.create_all(engine, tables=list(INDEX_TABLES), checkfirst=True)
    for ix in resource_t.indexes:
        if ix.name in ("ix_resource_type_updated", "ix_resource_type_pk"):
            ix.create(engine, checkfirst=True)
