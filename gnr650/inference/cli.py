"""Console scripts: ``gnr650-predict`` and ``gnr650-export`` (see README, "Use the trained model")."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from gnr650.errors import UserError, reporting_user_errors
from gnr650.runs import prepare_process

log = logging.getLogger("gnr650")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu.")
    return torch.device(name)


def predict_main(argv: list[str] | None = None) -> int:
    from gnr650.inference.predict import collect_images, predict_files, write_predictions
    from gnr650.inference.trained_run import load_run

    parser = argparse.ArgumentParser(
        prog="gnr650-predict", description="Predict classes for images with a trained run's best checkpoint."
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by train.py (holds results.json)")
    parser.add_argument("inputs", nargs="+", type=Path, help="image files or folders (searched recursively)")
    parser.add_argument("--out", type=Path, default=Path("predictions.csv"), help="CSV file (default: %(default)s)")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto (GPU when available), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--attention", action="store_true", help="ViTs: attention-rollout overlay per image in <out stem>_attention/"
    )
    args = parser.parse_args(argv)
    prepare_process()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    attention_dir = args.out.with_name(f"{args.out.stem}_attention") if args.attention else None
    with reporting_user_errors(parser.prog):
        run = load_run(args.run_dir).to(_device(args.device))
        files = collect_images(args.inputs)
        predictions = predict_files(run, files, args.topk, args.batch_size, attention_dir)
    write_predictions(args.out, predictions, min(args.topk, len(run.class_names)))
    unreadable = [p for p in predictions if p.error]
    log.info("%d images predicted -> %s", len(predictions) - len(unreadable), args.out)
    if unreadable:
        log.warning("%d unreadable, listed with their error in the CSV, e.g. %s", len(unreadable), unreadable[0].error)
    return 0


def export_main(argv: list[str] | None = None) -> int:
    from gnr650.inference.export import ONNX_OPSET, ONNX_TOLERANCE, export_onnx, export_safetensors
    from gnr650.inference.trained_run import load_run

    parser = argparse.ArgumentParser(
        prog="gnr650-export", description="Export a trained run's network: safetensors for timm, or ONNX."
    )
    parser.add_argument("run_dir", type=Path, help="a run directory written by train.py (holds results.json)")
    parser.add_argument("--format", choices=("safetensors", "onnx"), required=True)
    parser.add_argument("--out", type=Path, default=None, help="folder (default: <run dir>/exported/<format>)")
    args = parser.parse_args(argv)
    prepare_process()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or args.run_dir / "exported" / args.format
    with reporting_user_errors(parser.prog):
        run = load_run(args.run_dir)
        if args.format == "safetensors":
            path = export_safetensors(run, out)
            log.info("%s and config.json (timm: timm.create_model('local-dir:%s', pretrained=True))", path, out)
        else:
            path, diff = export_onnx(run, out)
            log.info(
                "%s (opset %d) and config.json; checked: ONNX Runtime's logits are PyTorch's within %.2e (<= %.0e)",
                path,
                ONNX_OPSET,
                diff,
                ONNX_TOLERANCE,
            )
    return 0


if __name__ == "__main__":
    sys.exit(predict_main())
