# differential_expression(): columns, order, groups and errors (the statistics themselves are
# unit-tested in Rust on the DE toy of scvi.md §12.7).

test_that("change mode returns scvi-tools' columns, sorted by proba_de, with the FDR flag", {
  m <- small_model()
  set.seed(1)
  de <- differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                n_samples_overall = 500L)
  expect_identical(names(de), c(
    "proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "pseudocounts", "delta",
    "lfc_mean", "lfc_median", "lfc_std", "lfc_min", "lfc_max", "raw_mean1", "raw_mean2",
    "non_zeros_proportion1", "non_zeros_proportion2", "raw_normalized_mean1",
    "raw_normalized_mean2", "is_de_fdr_0.05", "comparison", "group1", "group2"))
  expect_identical(nrow(de), 200L)
  expect_setequal(rownames(de), m$registry$gene_names)
  expect_false(is.unsorted(rev(de$proba_de)))
  expect_equal(de$proba_de + de$proba_not_de, rep(1, 200))
  expect_true(all(de$comparison == "H1975 vs Rest" & de$group2 == "Rest"))
  # the flagged genes are the top of the ranking and keep the mean (1 - proba_de) <= 0.05
  flagged <- de$is_de_fdr_0.05
  expect_identical(flagged, seq_along(flagged) <= sum(flagged))
  if (any(flagged)) expect_lte(mean(1 - de$proba_de[flagged]), 0.05)
  # raw statistics are those of the counts
  d <- small_data()
  g <- rownames(de)[1]
  in1 <- d$cells$cell_line == "H1975"
  expect_equal(de[g, "raw_mean1"], mean(d$counts[g, in1]))
  expect_equal(de[g, "non_zeros_proportion2"], mean(d$counts[g, !in1] > 0))
  # same R seed, same result
  set.seed(1)
  again <- differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                   n_samples_overall = 500L)
  expect_identical(again, de)
})

test_that("vanilla mode, idx conditions, several groups and intervals", {
  m <- small_model()
  v <- differential_expression(m, groupby = "cell_line", group1 = "H1975", mode = "vanilla",
                               all_stats = FALSE, n_samples_overall = 300L)
  expect_identical(names(v), c("proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2",
                               "comparison", "group1", "group2"))
  expect_false(is.unsorted(rev(v$bayes_factor)))
  i <- differential_expression(m, idx1 = "cell_line == 'H1975'", idx2 = "cell_line == 'H2228'",
                               n_samples_overall = 300L, cred_interval_lvls = c(0.5, 0.9))
  expect_false("comparison" %in% names(i))
  expect_true(all(c("lfc_confidence_interval_0.5_min", "lfc_confidence_interval_0.9_max") %in% names(i)))
  expect_true(all(i$lfc_confidence_interval_0.9_min <= i$lfc_median + 1e-12))
  all <- differential_expression(m, groupby = "cell_line", silent = TRUE, n_samples_overall = 200L)
  expect_identical(nrow(all), 200L * length(unique(small_data()$cells$cell_line)))
  expect_false(anyDuplicated(rownames(all)) > 0)
  fo <- differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                filter_outlier_cells = TRUE, n_samples_overall = 300L)
  expect_identical(nrow(fo), 200L)
  expect_equal(fo[rownames(fo), "raw_mean1"], differential_expression(
    m, groupby = "cell_line", group1 = "H1975", n_samples_overall = 300L)[rownames(fo), "raw_mean1"])
  bc <- differential_expression(m, groupby = "cell_line", group1 = "H1975", group2 = "H2228",
                                batch_correction = TRUE, n_samples_overall = 250L)
  expect_true(all(bc$group2 == "H2228"))
})

test_that("bad DE arguments give clear errors", {
  m <- small_model()
  expect_error(differential_expression(m, groupby = "nope"), "`groupby`.*not a column")
  expect_error(differential_expression(m, groupby = "cell_line", group1 = "XYZ"), "unknown group")
  expect_error(differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                       group2 = "H1975"), "must differ")
  expect_error(differential_expression(m, idx1 = rep(FALSE, 300)), "`idx1` selects no cells")
  expect_error(differential_expression(m, idx1 = "no_such_column > 1"), "`idx1`")
  expect_error(differential_expression(m), "groupby")
  expect_error(differential_expression(m, groupby = "cell_line", mode = "x"), "`mode`")
  expect_error(differential_expression(m, groupby = "cell_line", batchid1 = "a"), "batch_correction")
  expect_error(differential_expression(m, groupby = "cell_line", weights = "uniform",
                                       importance_weighting_kwargs = list(max_cells = 5)),
               "needs weights = \"importance\"")
  expect_error(differential_expression(m, groupby = "cell_line", weights = "importance",
                                       importance_weighting_kwargs = list(cells = 5)),
               "unknown entries 'cells'")
  expect_error(differential_expression(m, groupby = "cell_line", weights = "importance",
                                       importance_weighting_kwargs = list(max_cells = 0)),
               "importance_weighting_kwargs\\$max_cells")
  expect_error(differential_expression(m, groupby = "cell_line", weights = "importance",
                                       importance_weighting_kwargs = list(5)),
               "named list")
})

test_that("importance weights: DE and n_samples_overall draws", {
  m <- small_model()
  set.seed(2)
  opts <- list(n_mc_samples = 50, truncation = TRUE)
  imp <- differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                 n_samples_overall = 400L, weights = "importance",
                                 importance_weighting_kwargs = opts)
  set.seed(2)
  uni <- differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                 n_samples_overall = 400L)
  expect_identical(names(imp), names(uni))
  expect_false(is.unsorted(rev(imp$proba_de)))
  expect_false(identical(imp$lfc_mean, uni[rownames(imp), "lfc_mean"]))
  set.seed(2)
  expect_identical(differential_expression(m, groupby = "cell_line", group1 = "H1975",
                                           n_samples_overall = 400L, weights = "importance",
                                           importance_weighting_kwargs = opts), imp)
  # batch correction weights each batch's draws on its own
  bc <- differential_expression(m, groupby = "cell_line", group1 = "H1975", group2 = "H2228",
                                batch_correction = TRUE, n_samples_overall = 200L,
                                weights = "importance",
                                importance_weighting_kwargs = list(n_mc_samples = 20))
  expect_true(all(is.finite(bc$lfc_mean)))

  cells <- which(small_data()$cells$cell_line == "H2228")
  rows <- get_normalized_expression(m, indices = cells, n_samples_overall = 300L,
                                    weights = "importance",
                                    importance_weighting_kwargs = list(max_cells = 10,
                                                                       n_mc_samples = 50))
  expect_identical(dim(rows), c(300L, 200L))
  expect_equal(unname(rowSums(rows)), rep(1, 300), tolerance = 1e-4)
  expect_error(get_normalized_expression(m, weights = "importance"), "n_samples_overall")
  expect_error(get_normalized_expression(m, n_samples_overall = 10L, weights = "importance",
                                         transform_batch = m$registry$batch_categories[1:2]),
               "at most one `transform_batch`")
})
