"""``clawden image build|list|verify``: the golden image."""

from __future__ import annotations

import argparse
from pathlib import Path

from appliance.app import build_context, load_settings
from appliance.cli.output import Subparsers, progress
from appliance.controller.lifecycle import Lifecycle

RECIPE_DIR = Path(__file__).resolve().parents[2] / "images"


def register(sub: Subparsers) -> None:
    image = sub.add_parser("image", help="golden images").add_subparsers(
        dest="image_command", metavar="ACTION", required=True
    )
    build = image.add_parser("build", help="build the golden image from images/ (cached)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.set_defaults(handler=image_build)
    image.add_parser("list", help="list built images").set_defaults(handler=image_list)
    verify = image.add_parser("verify", help="check the newest image against its manifest")
    verify.set_defaults(handler=image_verify)


def image_build(args: argparse.Namespace) -> int:
    from appliance.image.builder import build_image

    ctx = build_context()
    image = build_image(ctx.settings.images_dir, RECIPE_DIR, progress, force=args.force)
    ctx.audit.append(ctx.actor, "image.build", image.version, {"force": bool(args.force)})
    print(f"golden image {image.version} ready at {image.dir}")
    return 0


def image_list(args: argparse.Namespace) -> int:
    from appliance.image import list_images

    images = list_images(load_settings().images_dir)
    if not images:
        print("no images yet — build one with `clawden image build`")
        return 0
    print(f"{'VERSION':<24} {'CREATED':<26} {'SIZE':>9}  SHA256 (golden)")
    for img in images:
        size = img.golden.stat().st_size if img.golden.exists() else 0
        sha = str(img.manifest.get("artefacts", {}).get("golden.qcow2", {}).get("sha256", "?"))
        print(f"{img.version:<24} {img.created_at:<26} {size / 2**20:>7.0f}Mi  {sha[:16]}…")
    return 0


def image_verify(args: argparse.Namespace) -> int:
    ctx = build_context()
    image = Lifecycle(ctx).verified_image(progress)
    print(f"golden image {image.version}: every sha256 matches its manifest")
    return 0
