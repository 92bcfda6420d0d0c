"""Command line: ``python -m dsim run|sample|train|sweep CONFIG.yaml [--set key=value ...] [--out DIR]
[--engine KIND]``.

User errors (bad YAML keys, bad channel files, an unwritable output path, a scenario too large for
memory or with non-finite numbers, an unknown or unimportable family / algorithm module, a checkpoint name
or file that is not there, a configuration problem ``train`` / ``finetune`` meet at set-up:
:class:`dsim.registry.OptionError`) print one clear line and exit with status 2, no traceback; a run in
which an algorithm failed exits with status 1 after writing everything computed.  Ctrl-C (SIGINT) or
SIGTERM stops the work, keeps what is computed (the finished algorithms, sweep points, the last training
checkpoint), prints one line saying where, shuts down the Ray instance this process started (no worker
left behind) and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsim", description="Distributed radio resource management simulator.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="scenario YAML file (see README)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key, e.g. --set batch=100 --set algorithms.0.rounds=10")
        sp.add_argument("--out", default=None, help="output directory (overrides `output`)")
        sp.add_argument("--engine", default=None, choices=["local", "ray"], help="overrides engine.kind")
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    r = sub.add_parser("run", help="run the scenario's algorithms and write the run directory")
    common(r)
    s = sub.add_parser("sample", help="draw the scenario's channels and write a channel file (.npz)")
    common(s)
    s.add_argument("-o", "--output-file", required=True, help="channel file to write (.npz)")
    t = sub.add_parser("train", help="train a learnable protocol (the config's `train:` section)")
    common(t)
    t.add_argument("--resume", action="store_true", help="resume from the output directory's checkpoint")
    w = sub.add_parser("sweep", help="run the config over a grid of key values (sweep.csv + plots)")
    common(w)
    w.add_argument("--grid", action="append", default=[], metavar="KEY.PATH=V1,V2,...",
                   help="values of one config key (repeat for a cartesian grid); the config's `sweep:` "
                        "section gives the default grid")
    w.add_argument("--point-plots", action="store_true", help="also write each point's run plots")
    f = sub.add_parser("finetune", help="federated fine-tuning across sites (the config's `federated:` section)")
    common(f)
    return p


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is (handled like Ctrl-C)."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Terminated()


def _shutdown_ray() -> None:
    """Shut down the Ray instance this process started or joined (its workers go with it)."""
    mod = sys.modules.get("ray")
    if mod is not None and mod.is_initialized():
        mod.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dsim.config import ConfigError, load_config
    from dsim.registry import RegistryError, algorithm_names
    from dsim.results import OutputError, check_out_file, prepare_out_dir
    from dsim.scenarios.build import (
        FileScenario,
        ScenarioError,
        check_memory,
        generate_channels,
        save_channels_file,
    )
    from dsim.scenarios.channel_file import ChannelFileError

    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    where = "nothing was written"
    try:
        if args.cmd == "sweep":
            from dsim.sweep import sweep_main

            where = "finished sweep points are kept; re-run the same command to go on"
            return sweep_main(args.config, args.grid, args.overrides, out=args.out, engine=args.engine,
                              progress=not args.no_progress, point_plots=args.point_plots)
        if args.cmd == "finetune":
            from dsim.federated import finetune_main

            where = "the finished methods' results are kept in the output directory"
            return finetune_main(args.config, args.overrides, args.out, args.engine, not args.no_progress)
        reads = {"run": ("algorithms",), "train": ("train",)}.get(args.cmd, ())
        cfg = load_config(args.config, args.overrides, out=args.out, engine=args.engine, reads=reads)
        family_scenario = not isinstance(cfg.scenario, FileScenario)
        if family_scenario and args.cmd != "train":
            check_memory(cfg.scenario, cfg.batch, cfg.seed, cfg.precision,
                         max(a.restarts for a in cfg.algorithms))
        if args.cmd == "run":
            from dsim.run import run

            prepare_out_dir(cfg.output)
            where = f"results of the finished algorithms are in {cfg.output}"
            try:
                run(cfg, progress=not args.no_progress, source=args.config)
            except RuntimeError as exc:
                print(f"dsim: some algorithms failed (results of the others are written): {exc}", file=sys.stderr)
                return 1
            return 0
        if args.cmd == "sample":
            if not family_scenario:
                raise ConfigError(f"{args.config}: scenario.file: `sample` draws a family scenario; "
                                  "give scenario.family instead of a file")
            out_file = check_out_file(args.output_file)
            family, ch = generate_channels(cfg.scenario, cfg.batch, cfg.seed, cfg.precision)
            try:
                path = save_channels_file(family, ch, out_file)
            except OSError as exc:
                raise OutputError(f"--output-file: cannot write {str(out_file)!r} ({exc.strerror})") from None
            print(f"wrote {path} ({family}, batch {cfg.batch})")
            return 0
        if args.cmd == "train":
            from dsim.train import train_main

            if cfg.train is None:
                raise ConfigError(f"{args.config}: train: required key missing for `dsim train`; allowed: a "
                                  f"mapping with `algorithm` (one of: {', '.join(algorithm_names(learnable=True))}) "
                                  "and its training options")
            if args.no_progress:
                cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"progress": False})})
            if args.resume and not (Path(cfg.output) / "checkpoint.pt").is_file():
                raise ConfigError(f"--resume: no checkpoint {str(Path(cfg.output) / 'checkpoint.pt')!r} to resume; "
                                  "allowed: the output directory of an earlier `dsim train` of this config "
                                  "(or leave --resume out to start afresh)")
            prepare_out_dir(cfg.output)
            where = f"the last finished step's checkpoint is in {cfg.output}"
            ckpt = train_main(cfg, Path(cfg.output), resume=args.resume)
            print(f"checkpoint: {ckpt}")
            return 0
    except (ConfigError, ChannelFileError, RegistryError, OutputError) as exc:
        print(f"dsim: error: {exc}", file=sys.stderr)
        return 2
    except ScenarioError as exc:
        print(f"dsim: error: {args.config}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        _shutdown_ray()
        what = "terminated (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\ndsim: {what}; {where}", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
