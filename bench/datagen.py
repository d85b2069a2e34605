"""Deterministic bulk test data for the search benchmark, in the shape of the Synthea bundles.

    python bench/datagen.py --patients 1000 --out DIR [--seed 1] [--templates tests/data/synthea] [--no-appointments]
    python bench/datagen.py --summarize tests/data/synthea

The Synthea patient transaction bundles in ``tests/data/synthea/`` are the templates. Patient N is a
copy of template ``N % len(templates)`` with, all derived from ``(seed, N)`` only:

* new ids: every UUID of the template (fullUrls, ids, identifier values, urn:uuid references, also
  inside the base64 clinical notes) becomes ``uuid5(namespace, f"{seed}:{N}:{old}")``;
* new identifier values (SSN, driver's licence, passport, phone number);
* new names (given and family name tokens, also in displays and notes), picked from lists below;
* every date and dateTime shifted by the same whole number of days (so ages and intervals hold).

Synthea writes no Appointments, so each template first gets one per Encounter (``appointments=True``,
the default): ``fulfilled``, the Encounter's period as ``start``/``end``, its type as ``serviceType``,
and as participants the patient (``urn:uuid``), the Encounter's practitioner and location (the same
conditional references). Their ids are UUIDs too, so they are renewed per patient like the rest.

The conditional references (``Organization?identifier=…``, ``Practitioner?identifier=…``,
``Location?identifier=…``) are kept, so they resolve against the hospital and practitioner bundles,
which are copied unchanged. Output files sort in load order::

    00-hospitalInformation.json  01-practitionerInformation.json  02-patient-00000.json  …

Same seed and templates give byte-identical output. Output is compact JSON (orjson).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import random
import re
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATES = ROOT / "tests" / "data" / "synthea"
NAMESPACE = uuid.UUID("0b6c3c8e-5d0e-4f7e-8a46-6f1d2f1c9a01")
HOSPITAL_OUT = "00-hospitalInformation.json"
PRACTITIONER_OUT = "01-practitionerInformation.json"
PATIENT_PREFIX = "02-patient-"
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = -5 * 365, 4 * 365  # templates end mid-2021: outputs stay in the past

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
DATE_RE = r"(?<![0-9A-Za-z-])[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9])"
NOTE_RE = r"@@NOTE[0-9]+@@"


def _words(text: str) -> list[str]:
    return text.split()


GIVEN_FEMALE = _words("""Abigail Ada Alma Amara Ana Aria Beatriz Bella Camila Carmen Chloe Clara Daniela Delia Elena Elif
Emma Esther Fatima Freya Grace Hana Hazel Ines Iris Isla Jasmine Julia Kaia Keiko Lara Layla Leah Lena Lucia Luna
Maya Mei Mila Nadia Naomi Nora Olivia Paula Priya Rosa Ruth Sara Sofia Tara Valentina Vera Yara Zoe""")
GIVEN_MALE = _words("""Aaron Adrian Ahmed Alejandro Andre Arjun Ben Caleb Carlos Daniel David Diego Elias Emil Ethan
Felix Finn Gabriel Hassan Henry Hugo Isaac Ivan Jacob Jonas Jose Kai Kenji Leo Liam Lucas Malik Marco Mateo Max
Miguel Milo Noah Omar Oscar Pablo Rafael Ravi Samuel Santiago Theo Tomas Victor Wei Xavier Yusuf Zane""")
FAMILY = _words("""Abara Adeyemi Alvarez Andersen Bakker Banerjee Becker Bianchi Brennan Castillo Chen Costa Dahl Diallo
Dubois Eriksen Esposito Fischer Fontaine Garcia Gonzaga Haddad Hansen Herrera Hoffman Ibrahim Ivanova Jansen
Jovanovic Kaur Keller Khan Kim Kowalski Larsen Laurent Lopez Mahlangu Marino Martins Meyer Molina Moreau Murphy
Nakamura Nguyen Novak Okafor Olsen Ortiz Park Patel Pereira Petrov Quinn Ramos Reyes Rossi Sanchez Santos Schmidt
Sato Silva Singh Sokolov Suzuki Tanaka Torres Tran Varga Vasquez Vogel Wagner Walsh Weber Yamamoto Yilmaz Zhang
Zimmermann""")


# ---------------------------------------------------------------------------------- templates


@dataclass
class Template:
    """A patient bundle cut into literal text and tokens to substitute.

    ``parts`` alternates literal strings and token tuples ``(kind, value)``; kinds are ``uuid``,
    ``date``, ``given``/``family`` (name tokens), ``ident`` (identifier values) and ``note`` (index
    into ``notes``, the base64 attachments, themselves cut into parts).
    """

    name: str
    parts: list[Any]
    notes: list[list[Any]]
    tokens: set[tuple[str, str]]
    counts: Counter[str]
    gender: str


def _split(
    text: str, pattern: re.Pattern[str], literal_kinds: dict[str, str], keep: frozenset[str]
) -> list[Any]:
    parts: list[Any] = []
    pos = 0
    for m in pattern.finditer(text):
        kind = m.lastgroup
        value = m.group(0)
        assert kind is not None
        if kind == "uuid" and value in keep:
            continue
        if kind == "date":
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                continue
        if kind == "lit":
            kind = literal_kinds[value]
        parts.append(text[pos : m.start()])
        parts.append((kind, value))
        pos = m.end()
    parts.append(text[pos:])
    return parts


def appointment_for(encounter: dict[str, Any], patient_url: str) -> dict[str, Any] | None:
    """The (fulfilled) Appointment that booked ``encounter``, or None if it has no whole period."""
    period = encounter.get("period") or {}
    if "start" not in period or "end" not in period or "T" not in period["start"]:
        return None
    subject = {"reference": patient_url}
    if "display" in encounter.get("subject", {}):
        subject["display"] = encounter["subject"]["display"]
    participants: list[dict[str, Any]] = [{"actor": subject, "required": "required", "status": "accepted"}]
    for part in encounter.get("participant", [])[:1]:
        if "individual" in part:
            participants.append({"actor": part["individual"], "required": "required", "status": "accepted"})
    for loc in encounter.get("location", [])[:1]:
        participants.append({"actor": loc["location"], "required": "information-only", "status": "accepted"})
    appointment: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": str(uuid.uuid5(NAMESPACE, f"appointment:{encounter['id']}")),
        "status": "fulfilled",
    }
    if encounter.get("type"):
        appointment["serviceType"] = encounter["type"][:1]
    if encounter.get("reasonCode"):
        appointment["reasonCode"] = encounter["reasonCode"]
    appointment |= {"start": period["start"], "end": period["end"], "participant": participants}
    return appointment


def add_appointments(bundle: dict[str, Any]) -> int:
    """Append one Appointment entry per Encounter of the patient bundle; return how many."""
    entries = bundle["entry"]
    patient_url = next(e["fullUrl"] for e in entries if e["resource"]["resourceType"] == "Patient")
    added = 0
    for entry in list(entries):
        if entry["resource"]["resourceType"] != "Encounter":
            continue
        appointment = appointment_for(entry["resource"], patient_url)
        if appointment is not None:
            entries.append({"fullUrl": f"urn:uuid:{appointment['id']}", "resource": appointment,
                            "request": {"method": "POST", "url": "Appointment"}})
            added += 1
    return added


def load_template(path: Path, keep: frozenset[str], appointments: bool = True) -> Template:
    bundle = orjson.loads(path.read_bytes())
    if bundle.get("type") != "transaction":
        raise ValueError(f"{path}: not a transaction bundle")
    if appointments:
        add_appointments(bundle)
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    literal_kinds: dict[str, str] = {}
    for name in patient.get("name", []):
        for given in name.get("given", []):
            literal_kinds[given] = "given"
        if "family" in name:
            literal_kinds[name["family"]] = "family"
    for ident in patient.get("identifier", []):
        if not re.fullmatch(UUID_RE, ident["value"]):
            literal_kinds[ident["value"]] = "ident"
    for telecom in patient.get("telecom", []):
        literal_kinds[telecom["value"]] = "ident"
    for value in literal_kinds:
        if orjson.dumps(value).decode()[1:-1] != value:
            raise ValueError(f"{path}: name or identifier {value!r} needs JSON escaping")

    # Clinical notes are base64 text/plain attachments: cut out, substituted separately, re-encoded.
    notes_text: list[str] = []
    for entry in bundle["entry"]:
        res = entry["resource"]
        attachments = [c["attachment"] for c in res.get("content", [])] + res.get("presentedForm", [])
        for att in attachments:
            if "data" in att and str(att.get("contentType", "")).startswith("text/"):
                notes_text.append(base64.b64decode(att["data"]).decode("utf-8"))
                att["data"] = f"@@NOTE{len(notes_text) - 1}@@"

    alternatives = "|".join(re.escape(v) for v in sorted(literal_kinds, key=len, reverse=True))
    lit = f"|(?P<lit>(?<![\\w']){'(?:' + alternatives + ')'}(?![\\w]))" if literal_kinds else ""
    pattern = re.compile(f"(?P<uuid>{UUID_RE})|(?P<date>{DATE_RE})|(?P<note>{NOTE_RE}){lit}")
    parts = _split(orjson.dumps(bundle).decode("utf-8"), pattern, literal_kinds, keep)
    notes = [_split(text, pattern, literal_kinds, keep) for text in notes_text]
    tokens = {p for p in parts if isinstance(p, tuple) and p[0] != "note"}
    tokens |= {p for note in notes for p in note if isinstance(p, tuple)}
    counts = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    return Template(path.name, parts, notes, tokens, counts, patient.get("gender", "unknown"))


@dataclass
class Templates:
    hospital: Path
    practitioner: Path
    patients: list[Template] = field(default_factory=list)


def reference_files(directory: Path) -> tuple[Path, Path]:
    hospital = sorted(directory.glob("*hospitalInformation*.json"))
    practitioner = sorted(directory.glob("*practitionerInformation*.json"))
    if len(hospital) != 1 or len(practitioner) != 1:
        raise SystemExit(
            f"{directory}: expected one hospitalInformation and one practitionerInformation bundle"
        )
    return hospital[0], practitioner[0]


def load_templates(directory: Path, appointments: bool = True) -> Templates:
    hospital, practitioner = reference_files(directory)
    keep = frozenset(re.findall(UUID_RE, hospital.read_text("utf-8") + practitioner.read_text("utf-8")))
    paths = sorted(p for p in directory.glob("*.json") if p not in (hospital, practitioner))
    if not paths:
        raise SystemExit(f"{directory}: no patient bundles")
    return Templates(hospital, practitioner, [load_template(p, keep, appointments) for p in paths])


# ---------------------------------------------------------------------------------- rendering


def _identifier(old: str, n: int, rng: random.Random) -> str:
    """A new value of the same shape as ``old`` (digits and upper-case letters replaced)."""
    if re.fullmatch(r"999-\d\d-\d{4}", old):  # SSN: area 999 is never issued
        return f"999-{n // 10000 % 100:02d}-{n % 10000:04d}"
    if re.fullmatch(r"555-\d{3}-\d{4}", old):
        return f"555-{rng.randint(100, 999)}-{n % 10000:04d}"
    if re.fullmatch(r"S\d{8}", old):  # driver's licence
        return f"S9{n:07d}"
    if re.fullmatch(r"X\d{8}X", old):  # passport
        return f"X{n:08d}X"
    return "".join(str(rng.randint(0, 9)) if c.isdigit() else c for c in old)


def render_patient(template: Template, n: int, seed: int) -> bytes:
    rng = random.Random(f"fhirhub-datagen:{seed}:{n}")
    shift = dt.timedelta(days=rng.randint(MIN_SHIFT_DAYS, MAX_SHIFT_DAYS))
    given_names = GIVEN_FEMALE if template.gender == "female" else GIVEN_MALE
    subst: dict[tuple[str, str], str] = {}
    for token in sorted(template.tokens):  # sorted: the rng is drawn in a fixed order
        kind, old = token
        if kind == "uuid":
            subst[token] = str(uuid.uuid5(NAMESPACE, f"{seed}:{n}:{old}"))
        elif kind == "date":
            subst[token] = (dt.date.fromisoformat(old) + shift).isoformat()
        elif kind == "given":
            subst[token] = f"{rng.choice(given_names)}{rng.randint(10, 999)}"
        elif kind == "family":
            subst[token] = f"{rng.choice(FAMILY)}{rng.randint(10, 999)}"
        else:
            subst[token] = _identifier(old, n, rng)
    for k, note in enumerate(template.notes):
        text = "".join(p if isinstance(p, str) else subst[p] for p in note)
        subst[("note", f"@@NOTE{k}@@")] = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return "".join(p if isinstance(p, str) else subst[p] for p in template.parts).encode("utf-8")


def patient_file(n: int) -> str:
    return f"{PATIENT_PREFIX}{n:05d}.json"


def generate(
    templates_dir: Path, out_dir: Path, patients: int, seed: int = 1, appointments: bool = True
) -> Counter[str]:
    """Write the bundles; return resource counts by type (all files, reference bundles included)."""
    templates = load_templates(templates_dir, appointments)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {patient_file(n) for n in range(patients)}
    for stale in out_dir.glob(f"{PATIENT_PREFIX}*.json"):
        if stale.name not in wanted:
            stale.unlink()
    counts: Counter[str] = Counter()
    for src, name in ((templates.hospital, HOSPITAL_OUT), (templates.practitioner, PRACTITIONER_OUT)):
        data = src.read_bytes()
        (out_dir / name).write_bytes(data)
        counts.update(e["resource"]["resourceType"] for e in orjson.loads(data)["entry"])
    for n in range(patients):
        template = templates.patients[n % len(templates.patients)]
        (out_dir / patient_file(n)).write_bytes(render_patient(template, n, seed))
        counts.update(template.counts)
    return counts


# ---------------------------------------------------------------------------------- summaries


REFERENCE_KEYS = {"reference", "identifier", "display", "type", "extension", "id"}


def _reference_kinds(value: Any, out: Counter[str]) -> None:
    """Count the kinds of reference in ``value``: urn:uuid, conditional, contained, logical, other."""
    if isinstance(value, dict):
        ref = value.get("reference")
        if isinstance(ref, str) and set(value) <= REFERENCE_KEYS:
            if ref.startswith("urn:uuid:"):
                out["urn:uuid"] += 1
            elif ref.startswith("#"):
                out["#contained"] += 1
            elif "?" in ref:
                rtype, query = ref.split("?", 1)
                out[f"{rtype}?{query.split('=')[0]}=…"] += 1
            else:
                out["other"] += 1
        elif isinstance(value.get("identifier"), dict) and set(value) <= REFERENCE_KEYS:
            out["logical (identifier only)"] += 1
        for v in value.values():
            _reference_kinds(v, out)
    elif isinstance(value, list):
        for v in value:
            _reference_kinds(v, out)


def summarize(directory: Path) -> str:
    """A Markdown summary of the bundles in ``directory`` (used for tests/data/synthea/README.md)."""
    shape = [
        "| file | Bundle.type | entries | requests | references |",
        "| --- | --- | ---: | --- | --- |",
    ]
    content = ["| file | resources by type |", "| --- | --- |"]
    total: Counter[str] = Counter()
    for path in sorted(directory.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        types = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
        total.update(types)
        requests = Counter(
            f"{e['request']['method']}{' + ifNoneExist' if 'ifNoneExist' in e['request'] else ''}"
            for e in bundle["entry"]
        )
        refs: Counter[str] = Counter()
        _reference_kinds([e["resource"] for e in bundle["entry"]], refs)
        shape.append(
            f"| {path.name} | {bundle['type']} | {len(bundle['entry'])} | {_join(requests, ': ')} | {_join(refs, ': ')} |"
        )
        content.append(f"| {path.name} | {_join(types, ' ')} |")
    content.append(f"| **total: {sum(total.values())}** | {_join(total, ' ')} |")
    return "\n".join(shape) + "\n\n" + "\n".join(content) + "\n"


def _join(counts: Counter[str], sep: str) -> str:
    return ", ".join(f"{k}{sep}{v}" for k, v in sorted(counts.items()))


# ---------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, help="number of patient bundles to write")
    parser.add_argument("--out", type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=1, help="seed (default 1)")
    parser.add_argument("--templates", type=Path, default=DEFAULT_TEMPLATES, help="Synthea bundles to copy")
    parser.add_argument("--no-appointments", action="store_true", help="no Appointment per Encounter")
    parser.add_argument(
        "--summarize", type=Path, metavar="DIR", help="print a Markdown summary of DIR and exit"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        sys.stdout.write(summarize(args.summarize))
        return 0
    if args.patients is None or args.out is None:
        parser.error("--patients and --out are required")
    if args.patients < 0:
        parser.error("--patients must be >= 0")
    started = time.perf_counter()
    counts = generate(args.templates, args.out, args.patients, args.seed, not args.no_appointments)
    elapsed = time.perf_counter() - started
    size = sum(p.stat().st_size for p in args.out.glob("*.json"))
    print(
        f"wrote {args.patients} patient bundles + 2 reference bundles to {args.out} "
        f"({size / 1e6:.1f} MB) in {elapsed:.1f} s"
    )
    print(f"resources: {sum(counts.values())}")
    for rtype, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {rtype:28} {count:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
