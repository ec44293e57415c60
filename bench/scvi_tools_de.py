#!/usr/bin/env python3
"""scvi-tools side of the DE comparison: SCVI (defaults, seed 0) on the cellbench singlets,
then change-mode differential expression of each cell line against the rest.

  python bench/scvi_tools_de.py --data DIR --epochs 400 --seed 0 --threads 2 --out DIR
                                [--weights uniform,importance] [--lines A549,H1975]

Writes out/de_<cell line>.csv (gene, proba_de, lfc_mean, bayes_factor) for uniform weights,
out/de_importance_<cell line>.csv for importance weights, and out/de_timing.json
({weights: {cell line: seconds}}).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scvi_tools_reference import load_cellbench  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--weights", default="uniform", help="comma-separated: uniform, importance")
    p.add_argument("--lines", default="", help="comma-separated cell lines (default: all)")
    a = p.parse_args()

    import scvi
    import torch

    torch.set_num_threads(a.threads)
    scvi.settings.seed = a.seed
    adata = load_cellbench(a.data)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="cell_line")
    model = scvi.model.SCVI(adata)
    model.train(max_epochs=a.epochs, accelerator="cpu", devices=1)
    a.out.mkdir(parents=True, exist_ok=True)
    timing = {}
    lines = a.lines.split(",") if a.lines else sorted(adata.obs["cell_line"].unique())
    for weights in a.weights.split(","):
        timing[weights] = {}
        prefix = "de_" if weights == "uniform" else f"de_{weights}_"
        for line in lines:
            t = time.perf_counter()
            de = model.differential_expression(
                groupby="cell_line", group1=line, mode="change", weights=weights
            )
            timing[weights][line] = time.perf_counter() - t
            de[["proba_de", "lfc_mean", "bayes_factor"]].to_csv(
                a.out / f"{prefix}{line}.csv", index_label="gene"
            )
    (a.out / "de_timing.json").write_text(json.dumps(timing, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
