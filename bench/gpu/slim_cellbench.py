#!/usr/bin/env python3
"""Copy the cellbench data set, cut to the singlets x hvg2000 genes, for carrying to the
GPU machine (the full matrix.mtx.gz is 22 MB of the 64 MiB a device call may carry).

The result has the same files and formats as /work/shared/data/cellbench (features x cells
MatrixMarket, features.tsv.gz with header gene_id, barcodes.tsv.gz, obs.tsv.gz with every
column, hvg2000.txt, validation_cells_seed0.txt), so commands that read the full set read
it unchanged: `--filter demuxlet_cls=SNG` keeps every cell and `--genes hvg2000.txt` every
gene. Cells keep their order, genes their matrix order; values are copied as text.
Standard library only.

  python3 bench/gpu/slim_cellbench.py /work/shared/data/cellbench .gpu/cellbench
"""

from __future__ import annotations

import gzip
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    dst.mkdir(parents=True, exist_ok=True)

    with gzip.open(src / "obs.tsv.gz", "rt") as fh:
        obs = fh.read().splitlines()
    header = obs[0].split("\t")
    j = header.index("demuxlet_cls")
    keep_cells = [i for i, row in enumerate(obs[1:]) if row.split("\t")[j] == "SNG"]
    with gzip.open(src / "barcodes.tsv.gz", "rt") as fh:
        barcodes = fh.read().splitlines()
    with gzip.open(src / "features.tsv.gz", "rt") as fh:
        feats = fh.read().splitlines()
    hvg = [g.strip() for g in open(src / "hvg2000.txt") if g.strip()]
    hvg_set = set(hvg)
    keep_genes = [i for i, g in enumerate(feats[1:]) if g.split("\t")[0] in hvg_set]
    if len(keep_genes) != len(hvg):
        raise SystemExit(f"{len(hvg)} hvg genes but {len(keep_genes)} found in features")
    cell_map = {c: k for k, c in enumerate(keep_cells)}
    gene_map = {g: k for k, g in enumerate(keep_genes)}

    entries = []
    with gzip.open(src / "matrix.mtx.gz", "rt") as fh:
        banner = fh.readline()
        for line in fh:
            if not line.startswith("%"):
                break
        for line in fh:
            r, c, v = line.split()
            gi = gene_map.get(int(r) - 1)
            if gi is None:
                continue
            ci = cell_map.get(int(c) - 1)
            if ci is None:
                continue
            entries.append((ci, gi, v))
    entries.sort()  # column-major (cell, then gene), as 10x writes it
    with gzip.open(dst / "matrix.mtx.gz", "wt", compresslevel=9) as fh:
        fh.write(banner)
        fh.write("% cellbench singlets x hvg2000 genes (bench/gpu/slim_cellbench.py)\n")
        fh.write(f"{len(keep_genes)} {len(keep_cells)} {len(entries)}\n")
        fh.writelines(f"{gi + 1} {ci + 1} {v}\n" for ci, gi, v in entries)
    with gzip.open(dst / "features.tsv.gz", "wt") as fh:
        fh.write("\n".join([feats[0]] + [feats[1 + i] for i in keep_genes]) + "\n")
    with gzip.open(dst / "barcodes.tsv.gz", "wt") as fh:
        fh.write("\n".join(barcodes[i] for i in keep_cells) + "\n")
    with gzip.open(dst / "obs.tsv.gz", "wt") as fh:
        fh.write("\n".join([obs[0]] + [obs[1 + i] for i in keep_cells]) + "\n")
    for name in ("hvg2000.txt", "validation_cells_seed0.txt", "PROVENANCE.md"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    print(f"{dst}: {len(keep_cells)} cells x {len(keep_genes)} genes, {len(entries)} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
