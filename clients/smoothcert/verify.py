"""``smoothserve-verify``: check a saved certificate record offline.

    smoothserve-verify record.json --public-key server.pub [--model DIR|model.onnx] [--input x.npy]

Checks, in order: the Ed25519 signature over the record's exact bytes (with a public key the
verifier trusts, never one carried by the record); the record against itself: the answer
recomputed from the counts with the server's own procedure entries (``smoothcert.procedures``:
the same functions the server decided with), the look schedule and each look's alpha
recomputed from the recorded plan (procedure, first look, cap, target radius, noise family and
scale, alpha), and the recorded smoothing config
against its hash and the rest of the record; and, when given, the model (the SHA-256 of its
file, and its ``config.pbtxt`` against the record's config: sigma, labels, value range, input
shape and dtype, sound noise) and the input's SHA-256. A record made from a client-chosen
seed is reported as a replay: the client could have tried seeds until one certified, so it is
reproducible evidence, not an independent certificate. docs/security.md lists every check.

Exit status: 0 valid, 1 invalid, 2 usage error, 3 valid but a replay (client-chosen seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from smoothserve_client.types import read_signed_record

from . import families, procedures
from .model_config import (
    MODEL_FILE,
    ComponentConfig,
    ModelConfigError,
    SmoothModelConfig,
    ensemble_sha256,
    is_model_name,
    is_version_name,
    sha256_of,
    step_version,
)
from .procedures.selection import selection_problems
from .records import (
    CONFIG_FIELDS,
    FORMAT_VERSIONS,
    INPUT_DTYPES,
    RECORD_FORMAT,
    RECORD_FORMAT_V1,
    check_signature,
    config_sha256,
    key_id,
    load_public_key,
    smoothing_config,
)

VALID, INVALID, USAGE, REPLAY = 0, 1, 2, 3


def close(a: float, b: float) -> bool:
    """Equal up to the last digits a different SciPy build may change."""
    return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def recompute(record: dict, allow_v1: bool = False) -> list[str]:
    """Problems found checking a record against itself (none: it holds): its answer
    recomputed from its counts, its look plan (``plan_problems``) and its smoothing config
    (``config_problems``). A v1 record, which records neither, is checked for its answer only,
    and only with ``allow_v1``."""
    form = record.get("format")
    if form == RECORD_FORMAT_V1 and not allow_v1:
        return [f"format {form} binds neither the smoothing config nor the look plan; "
                "check it with --allow-format-v1 if you accept that"]  # fmt: skip
    if not isinstance(form, str) or form not in FORMAT_VERSIONS:
        return [f"format {form!r}, expected {RECORD_FORMAT} (or an earlier one: "
                f"{', '.join(f for f in FORMAT_VERSIONS if f != RECORD_FORMAT)})"]
    try:
        if form == RECORD_FORMAT_V1:
            return answer_problems(record)
        bound = plan_problems(record) + config_problems(record)
        return bound or answer_problems(record)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        # ValueError: also a plan its procedure refuses (procedures.Procedure.check)
        return [f"malformed record: {type(exc).__name__}: {exc}"]


def record_plan(record: dict) -> tuple[procedures.Procedure, procedures.Plan]:
    """The record's procedure (PREDICT for mode predict) and the plan its answer followed from,
    as the server built them (``dataplane.procedure_plan``); an older record with its format's
    rules (``procedures.get(name, version)``; v1 with v2's); a v1 record is Gaussian and has no
    first look or cap (its schedule is taken as recorded)."""
    name = "predict" if record["mode"] == "predict" else record["procedure"]
    plan = record.get("plan") or {}
    version = FORMAT_VERSIONS[record.get("format")]
    v3 = version >= 3
    return procedures.get(name, max(version, 2)), procedures.Plan(
        alpha=record["alpha"], family=families.family(record.get("noise_family", "gaussian")),
        scale=record["sigma"], cap=plan.get("cap", record["n"]),
        first_look=plan.get("first_look", 0), target_radius=record["target_radius"],
        tolerance=record["tolerance"], horizon=plan.get("horizon", 0) if v3 else 0,
    )  # fmt: skip


def answer_problems(record: dict) -> list[str]:
    """Problems found recomputing the record's answer from its counts (none: it holds), with
    the server's own procedure entries (``smoothcert.procedures``): the recorded look of the
    schedule, decided again."""
    problems: list[str] = []
    counts = np.asarray(record["counts"], dtype=np.int64)
    selection = np.asarray(record["selection_counts"], dtype=np.int64)
    n, n0 = record["n"], record["n0"]
    if counts.sum() != n or (counts < 0).any():
        problems.append(f"the counts sum to {counts.sum()}, not n = {n}")
    if record["mode"] == "certify" and selection.sum() != n0:
        problems.append(f"the selection counts sum to {selection.sum()}, not n0 = {n0}")
    if problems:
        return problems
    procedure, plan = record_plan(record)
    procedure.check(plan)
    if procedure.sequential:
        schedule, k = tuple(record["look_schedule"]), record["looks"]
        if not 1 <= k <= len(schedule) or schedule[k - 1] != n:
            return [f"look {k} of schedule {list(schedule)} does not hold n = {n} samples"]
    else:
        schedule, k = (n,), 1
    expected = procedure.look(plan, schedule, k, selection, counts)
    for name in ("prediction", "candidate", "abstain"):
        if record[name] != getattr(expected, name):
            problems.append(f"{name} {record[name]} should be {getattr(expected, name)}")
    for name in ("radius", "p_a_lower", "p_value", "bound_alpha"):
        if not close(record[name], getattr(expected, name)):
            problems.append(f"{name} {record[name]} should be {getattr(expected, name)}")
    if record.get("norm", plan.family.norm) != plan.family.norm:
        problems.append(f"norm {record['norm']!r} should be {plan.family.norm!r} "
                        f"({plan.family.name} noise)")  # fmt: skip
    return problems


def is_count(value, least: int = 0) -> bool:
    return type(value) is int and value >= least


def plan_keys(procedure: procedures.Procedure, v3: bool) -> set[str]:
    """The keys of a record's ``plan`` for its procedure and format (``v3``: v3 or later)."""
    keys = {"first_look", "cap"}
    if v3 and procedure.sequential:
        keys |= {"selection"} | ({"horizon", "timed"} if procedure.timed else set())
    return keys


def plan_problems(record: dict) -> list[str]:
    """Problems with the record's look plan: the schedule must be the one the procedure's own
    entry gives for the recorded first look, cap, options, noise and alpha (an anytime
    certificate whose looks a deadline timed: looks that increase from the first look to at
    most the cap, ``Procedure.schedule_problems``); CERTIFY with fixed n and PREDICT make one
    look of n. The level of each look then follows from the schedule (``answer_problems``
    recomputes it). Formats v3 and v4: the selection samples must follow the recorded selection
    rule as far as the final selection counts show (``selection.selection_problems``)."""
    plan, v3 = record["plan"], FORMAT_VERSIONS[record.get("format")] >= 3
    procedure, steps = record_plan(record)
    keys = plan_keys(procedure, v3)
    if not isinstance(plan, dict) or set(plan) != keys:
        return [f"plan {plan} should hold {', '.join(sorted(keys))}"]
    first, cap, n = plan["first_look"], plan["cap"], record["n"]
    schedule, looks = list(record["look_schedule"]), record["looks"]
    if not procedure.sequential:
        if (first, cap, schedule, looks) != (0, n, [], 0):
            return [f"a fixed-n plan is one look of n = {n}: plan {plan}, look_schedule "
                    f"{schedule} and looks {looks} should be first_look 0, cap {n}, [] and 0"]  # fmt: skip
        return []
    if not (is_count(first, 1) and is_count(cap, 1) and is_count(looks, 1)):
        return [f"plan {plan} and looks {looks} should be positive integers"]
    if n > cap:
        return [f"n = {n} samples exceed the plan's cap {cap}"]
    timed = False
    if v3 and procedure.timed:
        timed, horizon = plan["timed"], plan["horizon"]
        if type(timed) is not bool or not is_count(horizon) or (not timed and horizon != 0):
            return [f"plan {plan}: timed should be true or false, and the horizon a count "
                    "(0 unless timed)"]  # fmt: skip
    problems = procedure.schedule_problems(steps, tuple(schedule), timed)
    if v3 and not problems:
        problems = selection_rule_problems(record, plan["selection"])
    return problems


def selection_rule_problems(record: dict, rule) -> list[str]:
    """A v3 sequential record's selection: its rule (first look, cap, level) well formed, the
    cap the most selection samples, and the final selection counts where the rule may stop."""
    if not isinstance(rule, dict) or set(rule) != {"first", "cap", "level"}:
        return [f"selection {rule} should hold first, cap and level"]
    first, cap, level = rule["first"], rule["cap"], rule["level"]
    if not (is_count(first, 1) and is_count(cap, 1) and isinstance(level, float)
            and 0 < level < 1):  # fmt: skip
        return [f"selection {rule}: first and cap should be positive integers, level in (0, 1)"]
    counts = np.asarray(record["selection_counts"], dtype=np.int64)
    return selection_problems(counts, cap, first, level)


def config_problems(record: dict) -> list[str]:
    """Problems with the record's smoothing config against itself and the rest of the record:
    its hash, sigma, the number of classes, the label of the answer, the input's shape, and
    the noise (a model configured for sound noise answers only with it; sound noise is drawn
    from PCG64)."""
    config, problems = record["config"], []
    if not isinstance(config, dict) or sorted(config) != sorted(CONFIG_FIELDS):
        return [f"config should hold exactly {list(CONFIG_FIELDS)}"]
    if record["config_sha256"] != config_sha256(config):
        problems.append(f"config_sha256 {record['config_sha256']} is not the SHA-256 of the "
                        f"config, {config_sha256(config)}")  # fmt: skip
    for name in ("sigma", "noise_family"):
        if config[name] != record[name]:
            problems.append(f"{name} {record[name]} differs from the config's {config[name]}")
    labels = config["labels"]
    sizes = {len(record["counts"])} | ({len(record["selection_counts"])}
                                       if record["mode"] == "certify" else set())  # fmt: skip
    if sizes != {len(labels)}:
        problems.append(f"counts of {sorted(sizes)} classes for the config's {len(labels)} labels")
    prediction = record["prediction"]
    label = "" if record["abstain"] else (
        labels[prediction] if is_count(prediction) and prediction < len(labels) else None)  # fmt: skip
    if record["label"] != label:
        problems.append(f"label {record['label']!r} should be {label!r} (the config's labels)")
    if config["input_shape"] != record["input"]["shape"]:
        problems.append(f"input shape {record['input']['shape']} differs from the config's "
                        f"{config['input_shape']}")  # fmt: skip
    if config["sound_noise"] and record["sound_noise"] is not True:
        problems.append("the config makes every request use sound noise; the record's did not")
    if record["sound_noise"] and record["seed"]["generator"] != "pcg64":
        problems.append(f"sound noise is drawn by pcg64, not {record['seed']['generator']!r}")
    return problems


def model_paths(path: Path, record: dict) -> tuple[Path, Path]:
    """The model file and ``config.pbtxt`` that ``--model`` names, in Triton's layout: a
    model's folder (``<name>/config.pbtxt``, the record's version below it), a version folder,
    a repository (the record's model in it), or the ``<name>/<version>/model.onnx`` file."""
    name, version = str(record["model"]["name"]), str(record["model"]["version"])
    for part in (name, version):
        if Path(part).name != part or part in ("", ".", ".."):
            raise ValueError(f"the record's model {name!r} version {version!r} is not a folder")
    if not path.is_dir():
        return path, path.parent.parent / "config.pbtxt"
    if (path / "config.pbtxt").is_file():
        return path / version / MODEL_FILE, path / "config.pbtxt"
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE, path.parent / "config.pbtxt"
    return path / name / version / MODEL_FILE, path / name / "config.pbtxt"


def model_problems(model_file: Path, config_path: Path, record: dict) -> list[str]:
    """Problems found checking the record against a model: the SHA-256 of its file, and its
    ``config.pbtxt`` against the record's smoothing config, field by field and by hash (a v1
    record: sigma, the number of classes and the answer's label only)."""
    problems: list[str] = []
    try:
        config = SmoothModelConfig.from_pbtxt(config_path.read_text())
    except OSError as exc:
        config, problem = None, (f"{config_path}: {exc.strerror or exc}: --model takes the "
                                 "model's folder, its repository, or <model>/<version>/model.onnx "
                                 "beside <model>/config.pbtxt, whose smoothing config the record "
                                 "must match")  # fmt: skip
    except (ModelConfigError, UnicodeDecodeError) as exc:
        config, problem = None, f"{config_path}: {exc}"
    try:
        if config is not None and config.is_ensemble:
            digest = composition_sha256(config, Path(config_path).parent.parent)
        else:
            digest = sha256_of(model_file)
    except (OSError, ModelConfigError, UnicodeDecodeError) as exc:
        problems.append(f"{getattr(exc, 'filename', None) or model_file}: "
                        f"{getattr(exc, 'strerror', None) or exc}")  # fmt: skip
    else:
        if digest != record["model"]["sha256"]:
            what = "composition's" if config is not None and config.is_ensemble else "file's"
            problems.append(f"the {what} SHA-256 is {digest}, the record's "
                            f"{record['model']['sha256']}")  # fmt: skip
    if config is None:
        return [*problems, problem]
    if config.name != record["model"]["name"]:
        problems.append(f"{config_path} names the model {config.name!r}, the record "
                        f"{record['model']['name']!r}")  # fmt: skip
    expected = smoothing_config(config)
    if record.get("format") == RECORD_FORMAT_V1:  # what a v1 record has of the config
        prediction, labels = record["prediction"], config.labels
        answer = (
            "" if record["abstain"] or not 0 <= prediction < len(labels) else labels[prediction]
        )
        recorded = {"sigma": record["sigma"], "classes": len(record["counts"]),
                    "label": record["label"]}  # fmt: skip
        expected = {"sigma": config.sigma, "classes": len(labels), "label": answer}
    else:
        recorded = record["config"] if isinstance(record["config"], dict) else {}
    for field, value in expected.items():
        if recorded.get(field) != value:
            problems.append(f"{field} {shown(recorded.get(field))} in the record, "
                            f"{shown(value)} in {config_path}")  # fmt: skip
    if "config_sha256" in record and record["config_sha256"] != config_sha256(expected):
        problems.append(f"config_sha256 {record['config_sha256']} is not that of "
                        f"{config_path}, {config_sha256(expected)}")  # fmt: skip
    return problems


def composition_sha256(config: SmoothModelConfig, repo: Path) -> str:
    """An ensemble's hash as the server computes it (``ensemble_sha256``) from the component
    files in ``repo``: each step's version, or the latest its version policy serves (-1)."""
    steps = []
    for step in config.ensemble_steps:
        name = step.model_name
        if not is_model_name(name):
            raise ModelConfigError(f"step {name!r} is not a model folder of the repository")
        folder = repo / name
        component = ComponentConfig.from_pbtxt((folder / "config.pbtxt").read_text())
        found = {int(v.name) for v in folder.iterdir()
                 if is_version_name(v.name) and (v / MODEL_FILE).is_file()}  # fmt: skip
        version = step_version(name, found, component.version_policy, step.model_version)
        steps.append((name, sha256_of(folder / str(version) / MODEL_FILE)))
    return ensemble_sha256(steps)


def shown(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def input_sha256(path: Path, dtype: str) -> str:
    """SHA-256 of an input as it was sent: a ``.npy`` file's array (in the record's dtype,
    little-endian, C order), or any other file's raw bytes."""
    if path.suffix != ".npy":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    array = np.load(path, allow_pickle=False)
    want = INPUT_DTYPES.get(dtype)
    if want is None or array.dtype.kind != want.kind or array.dtype.itemsize != want.itemsize:
        raise ValueError(f"{path} holds {array.dtype}; the record's input is {dtype}")
    return hashlib.sha256(np.ascontiguousarray(array, dtype=want).tobytes()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smoothserve-verify", description="Check a saved SmoothServe certificate record.",
        epilog="Exit status: 0 valid, 1 invalid, 2 usage error, 3 valid replay (client seed).",
    )  # fmt: skip
    parser.add_argument("record", type=Path, help="a record saved by the client (JSON)")
    parser.add_argument("--public-key", type=Path, action="append", required=True,
                        help="PEM public key of a server you trust; repeat for rotated keys")  # fmt: skip
    parser.add_argument("--model", type=Path,
                        help="the model: its folder (with config.pbtxt), its repository, or "
                             "<model>/<version>/model.onnx; checks the file's SHA-256 and the "
                             "smoothing config")  # fmt: skip
    parser.add_argument("--input", type=Path, help="the input (.npy, or the raw bytes sent)")
    parser.add_argument("--allow-format-v1", action="store_true",
                        help=f"check {RECORD_FORMAT_V1} records, which bind neither the smoothing "
                             "config nor the look plan, instead of refusing them")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        record_bytes, signature = read_signed_record(args.record.read_text())
        keys = {key_id(k): k for k in (load_public_key(p.read_bytes()) for p in args.public_key)}
        record = json.loads(record_bytes)
        if not isinstance(record, dict):
            raise ValueError("the record is not a JSON object")
    except (OSError, ValueError) as exc:
        print(f"smoothserve-verify: {exc}", file=sys.stderr)
        return USAGE
    report, valid = [], True

    def check(ok: bool, line: str, problems: list[str] = ()) -> None:
        nonlocal valid
        valid = valid and ok
        report.append(("ok      " if ok else "FAILED  ") + line
                      + "".join(f"\n          {p}" for p in problems))  # fmt: skip

    signer = record.get("key_id", "")
    key = keys.get(signer)
    check(key is not None and check_signature(record_bytes, signature, key),
          f"signature by key {signer}" + ("" if key else " (not among the trusted keys)"))  # fmt: skip
    problems = recompute(record, allow_v1=args.allow_format_v1)
    check(not problems, "answer recomputed from the counts; plan and config consistent",
          problems)  # fmt: skip
    if record.get("format") == RECORD_FORMAT_V1 and args.allow_format_v1:
        report.append(f"note    {RECORD_FORMAT_V1}: the look plan and the config beyond sigma "
                      "are not signed, so they were not checked")  # fmt: skip
    if args.model:
        try:
            model_file, config_path = model_paths(args.model, record)
            problems = model_problems(model_file, config_path, record)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            model_file, config_path, problems = args.model, "?", [f"malformed record: {exc}"]
        check(not problems, f"model file {model_file} SHA-256 and config {config_path}", problems)
    if args.input:
        try:
            digest = input_sha256(args.input, record["input"]["dtype"])
        except (ValueError, KeyError, TypeError) as exc:
            digest = f"({exc})"
        check(digest == record.get("input", {}).get("sha256"), f"input {args.input} SHA-256")
    print(summary(record))
    print("\n".join(report))
    if not valid:
        print("INVALID")
        return INVALID
    seed = record.get("seed")
    if isinstance(seed, dict) and seed.get("client_chosen"):
        print(f"VALID REPLAY: the client chose the noise seed ({seed.get('value')}); the "
              "record reproduces, but is not an independent certificate")  # fmt: skip
        return REPLAY
    print("VALID")
    return VALID


def summary(record: dict) -> str:
    """One line: the model, the answer, the procedure and its plan, alpha and the time."""
    try:
        plan = record.get("plan") or {}
        return (f"{record['model']['name']} v{record['model']['version']}: "
                + ("abstain" if record["abstain"] else
                   f"class {record['prediction']} ({record['label']}), radius {record['radius']:.4g}")
                + f", {record['procedure']}"
                + (f" (first_look={plan['first_look']}, cap={plan['cap']})"
                   if plan.get("first_look") else "")
                + f", alpha {record['alpha']}, at {record['server']['time']}")  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return "(a malformed record)"


if __name__ == "__main__":
    sys.exit(main())
