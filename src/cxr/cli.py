"""The ``cxr`` command. Light subcommands never import TensorFlow."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import NoReturn

from cxr import __version__
from cxr.errors import end_process, run_command


def _params(args: argparse.Namespace) -> None:
    from cxr.params import load_params
    params = load_params(args.file)
    print(json.dumps(dataclasses.asdict(params), indent=2))


def _pr_report(args: argparse.Namespace) -> None:
    from cxr.compare import pr_report
    from cxr.outputs import atomic_path
    text = pr_report(args.base, plots_html=args.plots_html)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
    else:
        print(text, end="")


def _check_repro(args: argparse.Namespace) -> int:
    import sys

    from cxr.compare import check_reproduction, fresh_reproduction
    where = fresh_reproduction(args.base) if args.fresh else Path(".")
    failures, summary = check_reproduction(args.base, where)
    for line in failures:
        print(f"cxr check-repro: {line}", file=sys.stderr)
    print(f"cxr check-repro: {summary}" + (f"; reproduction in {where}" if args.fresh else ""))
    return 1 if failures else 0


def _predict(args: argparse.Namespace) -> int:
    import sys

    from cxr.predict import collect_inputs, heatmap, load_predictor, predict_files
    predictor = load_predictor(args.model)
    if args.heatmap:
        predictor.require_gradients()
    if predictor.chosen_because:   # the default may change with any re-export: never silently
        print(f"cxr predict: using {predictor.name}; {predictor.chosen_because}", file=sys.stderr)
    paths = collect_inputs(args.paths)
    if not paths:
        print("cxr predict: no image files found", file=sys.stderr)
        return 1
    from tqdm import tqdm
    failed = 0
    show_bar = len(paths) > 1 and sys.stderr.isatty()
    if args.heatmap:
        Path(args.heatmap).mkdir(parents=True, exist_ok=True)
    for path, result, reason in tqdm(predict_files(predictor, paths), total=len(paths), disable=not show_bar,
                                     unit="img", desc="predict"):
        if reason:
            failed += 1
            print(f"cxr predict: {path}: {reason}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(result), flush=True)
        else:
            print(_table(result))
        if args.heatmap:
            heatmap(predictor, path, Path(args.heatmap))
    return 1 if failed else 0


def _table(result: dict) -> str:
    from cxr.data.labels import negative_name
    positive, negative = result["decision"], negative_name(result["decision"])
    flag = positive.upper() if result[positive] else negative
    lines = [f"{result['image']}  [{result['model']}]",
             f"  {positive} score {result[positive + '_score']:.3f}: {flag} (threshold {result['threshold']:.3f})"]
    lines += [f"  FLAGGED, do not act on this answer: {f}" for f in result["flags"]]
    for name, p in sorted(result["findings"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:<20} {p:.3f}")
    return "\n".join(lines)


def _workspace_params() -> dict:
    """params.yaml, which must be HEAD's: dvc exp run applies overrides to the workspace's file, so
    an earlier recipe's changes would leak into the next experiment."""
    import subprocess

    import yaml

    from cxr.recipes import RecipeError
    text = Path("params.yaml").read_text()
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], capture_output=True, text=True)
    if committed.returncode == 0 and committed.stdout != text:
        raise RecipeError("params.yaml: differs from HEAD (an earlier recipe's changes?); commit it or run "
                          "`git checkout params.yaml` first")
    return yaml.safe_load(text)


def _experiment(name: str, overrides: list[str], queue: bool, stages: list[str]) -> int:
    import subprocess
    command = ["dvc", "exp", "run", "-n", name, *(["--queue"] if queue else [])]
    return subprocess.run(command + [a for o in overrides for a in ("-S", o)] + stages).returncode


def _recipe(args: argparse.Namespace) -> int:
    from cxr.recipes import load_recipe, recipe_overrides
    params = _workspace_params()
    overrides = recipe_overrides(params, load_recipe(args.name), f"recipes/{args.name}.yaml") + args.set
    if args.print:
        print("\n".join(overrides))
        return 0
    return _experiment(args.name, overrides, args.queue, args.stage)


def _sweep(args: argparse.Namespace) -> int:
    from cxr.recipes import SWEEP, SWEEP_VARIANT, RecipeError, load_recipe, recipe_overrides, sweep_recipes
    params = _workspace_params()
    recipes, too_small = sweep_recipes(load_recipe(SWEEP), params["image"]["size"])
    if args.families:
        chosen = args.families.split(",")
        unknown = [f for f in chosen if f not in recipes]
        if unknown:
            raise RecipeError(f"--families: {unknown[0]!r} is not a network family that fits image.size "
                              f"{params['image']['size']} (have: {', '.join(recipes)})")
        recipes = {f: recipes[f] for f in chosen}
    for family, recipe in recipes.items():
        status = _experiment(f"sweep-{family}", recipe_overrides(params, recipe, f"recipes/{SWEEP}.yaml") + args.set,
                             queue=True, stages=args.stage)
        if status:
            return status
    print(f"cxr sweep: queued {len(recipes)} experiments ({', '.join(recipes)})"
          + (f"; left out, too large for image.size {params['image']['size']}: {', '.join(too_small)}"
             if too_small else "")
          + ". Run them: dvc queue start; rank them on validation (the test split stays out of the choice): "
            f"dvc exp show --sort-by metrics/train/{SWEEP_VARIANT}.json:val_decision_auroc")
    return 0


def _serve(args: argparse.Namespace) -> None:
    import sys

    from cxr.predict import load_predictor
    from cxr.serve import ServeLimits, create_app, make_server, trusted_hosts
    limits = ServeLimits(max_mb=args.max_mb, concurrency=args.concurrency, timeout=args.timeout)
    predictor = load_predictor(args.model)
    if predictor.chosen_because:
        print(f"cxr serve: using {predictor.name}; {predictor.chosen_because}", file=sys.stderr, flush=True)
    hosts = trusted_hosts(args.host, tuple(args.allowed_host))
    server = make_server(create_app(predictor, limits, hosts), args.host, args.port, limits)
    print(f"cxr serve: {predictor.name} on http://{args.host}:{server.effective_port}/ "
          f"(research tool, not a diagnosis; Host names accepted: {', '.join(hosts)})", flush=True)
    try:
        server.run()
    finally:
        server.close()


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _concurrency(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 64, got {text}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr", description="Chest X-ray classifiers on NIH ChestX-ray14.")
    parser.add_argument("--version", action="version", version=f"cxr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="validate params.yaml and print the parsed values")
    p.add_argument("file", nargs="?", default="params.yaml")
    p.set_defaults(func=_params)
    p = sub.add_parser("pr-report", help="markdown of params/metrics/plots changes against a base revision")
    p.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    p.add_argument("--out", help="write the markdown here instead of stdout")
    p.add_argument("--plots-html", help="also render `dvc plots diff` into this folder")
    p.set_defaults(func=_pr_report)
    p = sub.add_parser("check-repro", help="compare the work tree's metrics (or, with --fresh, a reproduction "
                                           "from scratch) with a revision's; exit 1 beyond its 95%% intervals")
    p.add_argument("--base", default="HEAD", help="git revision whose committed metrics are the reference")
    p.add_argument("--fresh", action="store_true",
                   help="first clone --base into a temporary folder and run `dvc repro` there from an empty cache")
    p.set_defaults(func=_check_repro)
    p = sub.add_parser("recipe", help="run an earlier project's setup (recipes/NAME.yaml) as a DVC experiment")
    p.add_argument("name", help="a file name in recipes/ without .yaml, e.g. triage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override for dvc exp run -S (repeatable), e.g. models.capstone.weights=null")
    p.add_argument("--queue", action="store_true", help="queue the experiment (dvc queue start runs it)")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE",
                   help="run only this stage and what it needs (repeatable), e.g. evaluate; default: all")
    p.add_argument("--print", action="store_true", help="print the overrides instead of running")
    p.set_defaults(func=_recipe)
    p = sub.add_parser("sweep", help="queue one DVC experiment per network family (recipes/sweep.yaml)")
    p.add_argument("--families", help="comma-separated families instead of every one, e.g. cnn,mobilenet")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override for every experiment (repeatable), e.g. models.candidate.epochs=5")
    p.add_argument("--stage", action="append", default=[], metavar="STAGE",
                   help="run only this stage and what it needs (repeatable), e.g. evaluate; default: all")
    p.set_defaults(func=_sweep)
    p = sub.add_parser("predict", help="findings for PNG/JPEG/DICOM files or folders")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    p.add_argument("--model", help="a model bundle (models/cnn/export, or models/cnn), or one .keras or "
                                   ".tflite file inside it; default: the variant whose decision has the best "
                                   "validation AUROC")
    p.add_argument("--json", action="store_true", help="one JSON object per input line")
    p.add_argument("--heatmap", metavar="OUT_DIR", help="write heatmap overlays of the decision score here (Keras models)")
    p.set_defaults(func=_predict)
    p = sub.add_parser("serve", help="web page and JSON API: upload an X-ray, see findings and heatmap")
    p.add_argument("--model", help="as for predict; default: the variant whose decision has the best validation AUROC")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    p.add_argument("--max-mb", type=_positive, default=20.0, help="upload size limit in MB (default 20)")
    p.add_argument("--concurrency", type=_concurrency, default=2, metavar="N",
                   help="uploads decoded and predicted at once; bounds memory (default 2)")
    p.add_argument("--timeout", type=_positive, default=30.0,
                   help="seconds an idle connection stays open, and a request waits for its turn (default 30)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests for this Host name (repeatable); others get 400")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    status = run_command(lambda: args.func(args), f"cxr {args.command}")
    raise SystemExit(status or 0)


def console() -> NoReturn:
    """The installed `cxr` command: ``main``, then the process ends as a stage's does (``end_process``)."""
    try:
        main()
    except SystemExit as e:
        if not isinstance(e.code, (int, type(None))):
            raise   # a message for Python to print
        end_process(e.code or 0)


if __name__ == "__main__":
    console()
