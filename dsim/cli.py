"""Command line: ``python -m dsim run|sample|train CONFIG.yaml [--set key=value ...] [--out DIR] [--engine KIND]``.

User errors (bad YAML keys, bad channel files, an unknown or unimportable family / algorithm module)
print one clear message and exit with status 2, no traceback; a run in which an algorithm failed exits
with status 1 after writing everything computed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsim", description="Distributed radio resource management simulator.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", help="scenario YAML file (see README)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config key, e.g. --set batch=100 --set algorithms.0.rounds=10")
        sp.add_argument("--out", default=None, help="output directory (overrides `output`)")
        sp.add_argument("--engine", default=None, choices=["local", "ray"], help="overrides engine.kind")

    r = sub.add_parser("run", help="run the scenario's algorithms and write the run directory")
    common(r)
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    s = sub.add_parser("sample", help="draw the scenario's channels and write a channel file (.npz)")
    common(s)
    s.add_argument("-o", "--output-file", required=True, help="channel file to write (.npz)")
    t = sub.add_parser("train", help="train a learnable protocol (the config's `train:` section)")
    common(t)
    t.add_argument("--resume", action="store_true", help="resume from the output directory's checkpoint")
    f = sub.add_parser("finetune", help="federated fine-tuning across sites (the config's `federated:` section)")
    common(f)
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dsim.config import ConfigError, load_config
    from dsim.registry import RegistryError, algorithm_names
    from dsim.scenarios.build import FileScenario, generate_channels, save_channels_file
    from dsim.scenarios.channel_file import ChannelFileError

    try:
        if args.cmd == "finetune":
            from dsim.federated import finetune_main

            return finetune_main(args.config, args.overrides, args.out, args.engine, not args.no_progress)
        cfg = load_config(args.config, args.overrides, out=args.out, engine=args.engine)
        if args.cmd == "run":
            from dsim.run import run

            try:
                run(cfg, progress=not args.no_progress)
            except RuntimeError as exc:
                print(f"dsim: some algorithms failed (results of the others are written): {exc}", file=sys.stderr)
                return 1
            return 0
        if args.cmd == "sample":
            if isinstance(cfg.scenario, FileScenario):
                raise ConfigError(f"{args.config}: scenario.file: `sample` draws a family scenario; "
                                  "give scenario.family instead of a file")
            family, ch = generate_channels(cfg.scenario, cfg.batch, cfg.seed, cfg.precision)
            path = save_channels_file(family, ch, Path(args.output_file))
            print(f"wrote {path} ({family}, batch {cfg.batch})")
            return 0
        if args.cmd == "train":
            from dsim.train import train_main

            if cfg.train is None:
                raise ConfigError(f"{args.config}: train: required key missing for `dsim train`; allowed: a "
                                  f"mapping with `algorithm` (one of: {', '.join(algorithm_names(learnable=True))}) "
                                  "and its training options")
            ckpt = train_main(cfg, Path(cfg.output), resume=args.resume)
            print(f"checkpoint: {ckpt}")
            return 0
    except (ConfigError, ChannelFileError, RegistryError) as exc:
        print(f"dsim: error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
