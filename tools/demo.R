# End-to-end demo on the bundled CellBench data: fit SCVI with batch correction, write the
# latent space, the training curves, a UMAP and the saved model to rscvi-demo/.
# Run from the repository root after installing (`make demo` does both).
library(rscvi)

out <- "rscvi-demo"
dir.create(out, showWarnings = FALSE)

sce <- rscvi_example_sce()
model <- scvi(sce, batch_key = "batch")
model <- train(model, max_epochs = 100, seed = 0)

latent <- get_latent_representation(model)
if (is.null(rownames(latent))) rownames(latent) <- colnames(sce)
latent_csv <- file.path(out, "latent.csv")
utils::write.csv(data.frame(cell = rownames(latent), latent, check.names = FALSE),
                 latent_csv, row.names = FALSE)

curves_png <- file.path(out, "training_curves.png")
grDevices::png(curves_png, width = 1000, height = 700, res = 110)
plot(model)
grDevices::dev.off()

# UMAP of the latent space: cell lines should separate, batches should mix within them.
set.seed(0)
emb <- uwot::umap(latent, n_neighbors = 15, min_dist = 0.3)
cd <- SummarizedExperiment::colData(sce)
umap_png <- file.path(out, "umap.png")
grDevices::png(umap_png, width = 1600, height = 700, res = 110)
op <- graphics::par(mfrow = c(1, 2), mar = c(4, 4, 3, 11), xpd = NA)
for (key in c("cell_line", "batch")) {
  groups <- factor(cd[[key]])
  cols <- grDevices::palette.colors(nlevels(groups) + 1L, "Okabe-Ito")[-1]
  plot(emb, col = cols[groups], pch = 16, cex = 0.6, xlab = "UMAP 1", ylab = "UMAP 2",
       main = sprintf("SCVI latent, coloured by %s", key))
  graphics::legend("topleft", inset = c(1.02, 0), legend = levels(groups), col = cols,
                   pch = 16, bty = "n", title = key)
}
graphics::par(op)
grDevices::dev.off()

model_dir <- file.path(out, "model")
save_model(model, model_dir, overwrite = TRUE)

cat("rscvi demo wrote:\n",
    sprintf("  %s  (%d cells x %d latent dimensions)\n", latent_csv, nrow(latent), ncol(latent)),
    sprintf("  %s\n", curves_png),
    sprintf("  %s\n", umap_png),
    sprintf("  %s/  (saved model)\n", model_dir), sep = "")
