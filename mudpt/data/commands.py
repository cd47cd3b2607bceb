"""``mudpt data``: list the known datasets and check a data folder before training.

    mudpt data list
    mudpt data check oxford_pets --root /data --shots 16 --seed 1 --subsample base
    mudpt data check /path/to/my_photos --full

``check`` loads the dataset exactly as training would (writing the split and few-shot caches
the reference code would write) and prints the class count, split sizes, a few class names
and how the splits were obtained. ``--full`` also opens and decodes every image the splits
list and reports the unreadable ones (exit status 2 when there are any). Errors are printed as
one paragraph; exit status 2.
"""

from __future__ import annotations

import argparse

from mudpt.core.help import DefaultsHelpFormatter
from mudpt.core.vocabulary import SUBSAMPLES


def _cmd_list(args) -> int:
    from mudpt.data import available_datasets, get_dataset_spec

    for name in available_datasets():
        spec = get_dataset_spec(name)
        where = f"<root>/{spec.folder}/" if spec.builtin else "registered"
        kind = "test only" if spec.test_only else "train/val/test"
        print(f"{name:20s} {where:32s} {kind}")
    return 0


def _cmd_check(args) -> int:
    from mudpt.data import check_images, load_dataset

    ds = load_dataset(args.dataset, root=args.root, shots=args.shots, seed=args.seed, subsample=args.subsample)
    print(ds.summary())
    shown = ", ".join(ds.classnames[:args.show])
    more = f", ... ({ds.num_classes - args.show} more)" if ds.num_classes > args.show else ""
    print(f"classes: {shown}{more}")
    if ds.dataset_dir is not None:
        print(f"folder: {ds.dataset_dir}")
    for note in ds.notes:
        print(f"note: {note}")
    if not args.full:
        return 0
    items = list({item.path: item for item in ds.train + ds.val + ds.test}.values())
    bad = check_images(items, num_workers=args.num_workers)
    print(f"opened {len(items)} image(s): {len(items) - len(bad)} readable, {len(bad)} unreadable")
    for path, reason in bad[:args.show_bad]:
        print(f"  {path}: {reason}")
    if len(bad) > args.show_bad:
        print(f"  ... and {len(bad) - args.show_bad} more")
    return 2 if bad else 0


def register_commands(subparsers) -> None:
    """Add ``mudpt data list`` and ``mudpt data check`` to the CLI."""
    parser = subparsers.add_parser("data", help="list datasets, check a data folder",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="data_command", metavar="ACTION")
    listing = actions.add_parser("list", help="registered dataset names and their folders",
                                 description="List the registered datasets (benchmarks and plug-ins).")
    listing.set_defaults(func=_cmd_list)
    check = actions.add_parser("check", help="load a dataset and print its splits",
                               description="Load a dataset as training would and print its splits; "
                                           "--full also decodes every image.",
                               formatter_class=DefaultsHelpFormatter)
    check.add_argument("dataset", help="a registered name or a path to your own data")
    check.add_argument("--root", default=None,
                       help="folder holding the benchmark folders (default: $MUDPT_DATA_ROOT)")
    check.add_argument("--shots", type=int, default=0, help="few-shot K (0: full splits)")
    check.add_argument("--seed", type=int, default=1, help="few-shot seed")
    check.add_argument("--subsample", choices=SUBSAMPLES, default="all", help="class subset")
    check.add_argument("--show", type=int, default=5, help="how many class names to print")
    check.add_argument("--full", action="store_true", help="open and decode every listed image")
    check.add_argument("--show-bad", type=int, default=20, dest="show_bad",
                       help="with --full: how many unreadable files to list")
    check.add_argument("--num-workers", type=int, default=0, dest="num_workers",
                       help="with --full: worker processes decoding images")
    check.set_defaults(func=_cmd_check)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
