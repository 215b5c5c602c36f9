"""Live R references for differential expression: glmmTMB (NB GLMM) on the cells, and edgeR,
DESeq2, limma-voom and glmGamPoi on pseudobulk sums.

Each runs in one ``Rscript`` process (like :func:`scnotes.glmm.fit_lme4`), with
the data written to a temporary directory as CSV:

* :func:`fit_glmmtmb`: per gene, ``glmmTMB(y ~ 0 + cell_group + offset(log(total))
  + (1 | donor) [+ (1 | sample)], family = nbinom2)`` (Brooks et al. 2017, R J 9:378;
  Laplace approximation; variance μ + μ²/θ) on the cells. Wald z and p for the
  contrasts from the fixed-effect covariance.
* :func:`fit_edger`: per cell type, edgeR's quasi-likelihood pipeline on the
  pseudobulk sums (Chen, Lun & Smyth 2016, F1000Res 5:1438; Lun & Smyth 2017):
  ``d <- estimateDisp(DGEList(Y, lib.size = lib), X)``, ``glmQLFit(d, X)``,
  ``glmQLFTest(fit, coef = "condition")``; ``df`` = the test's ``df.total``.
* :func:`fit_deseq2`: per cell type, DESeq2's Wald test on the pseudobulk sums (Love,
  Huber & Anders 2014, Genome Biol 15:550): ``DESeqDataSetFromMatrix(Y, design = X)``,
  ``sizeFactors(dds) <- lib / geomean(lib)``, ``DESeq(dds)``, ``results(dds, name = "condition",
  independentFiltering = FALSE, cooksCutoff = FALSE)``.
* :func:`fit_limma_voom`: per cell type, limma-voom (Law et al. 2014, Genome Biol 15:R29;
  Ritchie et al. 2015, NAR 43:e47): ``v <- voom(Y, X, lib.size = lib)``, ``lmFit(v, X)``,
  ``eBayes(fit, robust = TRUE)`` (Phipson et al. 2016, Ann Appl Stat 10:946), moderated t with
  ``df.total``; or, ``block="donor"``, the donor as a random block through
  ``duplicateCorrelation`` (Smyth, Michaud & Scott 2005, Bioinformatics 21:2067).
* :func:`fit_glmgampoi`: per cell type, glmGamPoi (Ahlmann-Eltze & Huber 2021, Bioinformatics
  36:5701): ``glm_gp(Y, design = X, size_factors = lib / geomean(lib), overdispersion = TRUE)``,
  ``test_de(fit, contrast = <condition column>)``, its quasi-likelihood F test.

Python references (PyDESeq2, Wilcoxon on cells) are in :mod:`scnotes.glmm._pyrefs`; they share
this module's pseudobulk design (:func:`_pb_plan`) and table (:func:`_pb_table`).

Pseudobulk design per cell type (built once in Python, :func:`_pb_plan`, and handed to every
method as a numeric matrix, so all of them fit the same model): ``X = ~ donor + covariates +
condition`` when some donor appears in both conditions (paired), else ``~ covariates +
condition``; ``covariates`` are the optional ``covariate_keys`` (sample-level obs columns of the
pseudobulk; one aliased with the donor — constant within donor in a paired design — or constant
in the cell type is dropped there, with a note in ``attrs["notes"]``). Library sizes ``lib`` are
the summed per-cell totals (``total_counts``) of each sample, not the column sums of the genes
tested (which, for a panel of 100 genes with strong interferon response, would absorb the
response); edgeR's TMM, DESeq2's median-of-ratios and glmGamPoi's own size factors are therefore
not applied. Genes with no count in a cell type are not tested (NaN). Log fold changes are
reported on the natural-log scale (log2 × ln 2) so they compare with the GLMM contrasts.

Every table has the columns :data:`scnotes.glmm.TIDY_COLUMNS` with ``df`` (the test's degrees of
freedom, NaN for a Wald / rank test; :func:`tidy_columns`).

Requires R with ``glmmTMB``, ``edgeR``, ``DESeq2``, ``limma``, ``glmGamPoi`` (Debian/Ubuntu:
``apt-get install r-cran-glmmtmb r-bioc-edger r-bioc-deseq2 r-bioc-limma r-bioc-glmgampoi``, or
``bash scripts/install_r.sh``). Versions checked: R 4.2, edgeR 3.40.2, DESeq2 1.38.3,
limma 3.54.1, glmGamPoi 1.10.2 (Debian bookworm).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._checks import key_error
from ._design import GLMMData
from ._rscript import r_package_available, run_r_script
from ._tidy import bh_qvalues, tidy_effects

__all__ = ["fit_glmmtmb", "fit_edger", "fit_deseq2", "fit_limma_voom", "fit_glmgampoi", "r_package_available",
           "GlmmTMBResult", "R_INSTALL_HINTS", "tidy_columns"]

R_INSTALL_HINTS = {
    "glmmTMB": "apt-get install r-cran-glmmtmb (Debian/Ubuntu) or Rscript -e 'install.packages(\"glmmTMB\")'",
    "edgeR": "apt-get install r-bioc-edger (Debian/Ubuntu) or BiocManager::install(\"edgeR\") in R",
    "DESeq2": "apt-get install r-bioc-deseq2 (Debian/Ubuntu) or BiocManager::install(\"DESeq2\") in R",
    "limma": "apt-get install r-bioc-limma (Debian/Ubuntu) or BiocManager::install(\"limma\") in R",
    "glmGamPoi": "apt-get install r-bioc-glmgampoi (Debian/Ubuntu) or BiocManager::install(\"glmGamPoi\") in R",
}


def _hint(package):
    return (f"R package {package} is not installed; install it with {R_INSTALL_HINTS[package]} "
            "(or `bash scripts/install_r.sh` in the scnotes repository)")


def _run(script: str, package: str, files: dict, args=(), rscript=None, timeout=3600.0, workdir=None):
    return run_r_script(script, package, files, _hint(package), args=args, rscript=rscript,
                        timeout=timeout, workdir=workdir)


# ----------------------------------------------------------------------------- glmmTMB
_GLMMTMB = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; use_sample <- as.integer(args[2]) == 1
suppressPackageStartupMessages(library(glmmTMB))
cells <- read.csv(file.path(dir, "cells.csv"))
y <- as.matrix(read.csv(file.path(dir, "counts.csv"), check.names = FALSE))
G <- as.integer(readLines(file.path(dir, "n_groups.txt")))
cells$cell_group <- factor(cells$cell_group, levels = 0:(G - 1))
cells$donor <- factor(cells$donor); cells$sample <- factor(cells$sample)
form <- if (use_sample) y ~ 0 + cell_group + offset(log(total)) + (1 | donor) + (1 | sample) else
  y ~ 0 + cell_group + offset(log(total)) + (1 | donor)
fe <- list(); vc <- list(); pars <- list()
cpu <- function() { pt <- proc.time(); pt[["user.self"]] + pt[["sys.self"]] }
t0 <- proc.time()[["elapsed"]]; c0 <- cpu()
for (j in seq_len(ncol(y))) {
  cells$y <- y[, j]
  msgs <- character(0)
  tj <- proc.time()[["elapsed"]]; cj <- cpu()
  fit <- withCallingHandlers(
    tryCatch(glmmTMB(form, data = cells, family = nbinom2),
             error = function(e) { msgs <<- c(msgs, paste("error:", conditionMessage(e))); NULL }),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
  secs <- proc.time()[["elapsed"]] - tj; cpu_secs <- cpu() - cj
  su <- NA; sw <- NA; th <- NA; ll <- NA
  if (!is.null(fit)) {
    cf <- summary(fit)$coefficients$cond
    fe[[j]] <- data.frame(gene = j - 1, group = seq_len(nrow(cf)) - 1, estimate = cf[, 1], se = cf[, 2])
    V <- as.matrix(vcov(fit)$cond)
    vc[[j]] <- data.frame(gene = j - 1, row = rep(seq_len(G) - 1, G), col = rep(seq_len(G) - 1, each = G),
                          value = as.vector(V))
    v <- VarCorr(fit)$cond
    su <- attr(v$donor, "stddev")[[1]]
    if (use_sample) sw <- attr(v$sample, "stddev")[[1]]
    th <- sigma(fit); ll <- as.numeric(logLik(fit))
  }
  pars[[j]] <- data.frame(gene = j - 1, sigma_u = su, sigma_w = sw, theta = th, loglik = ll, seconds = secs,
                          cpu_seconds = cpu_secs,
                          messages = paste(gsub("[\r\n]", " ", msgs), collapse = " | "))
}
total <- proc.time()[["elapsed"]] - t0; total_cpu <- cpu() - c0
fe <- do.call(rbind, fe); vc <- do.call(rbind, vc)
if (is.null(fe)) { fe <- data.frame(gene = integer(0), group = integer(0), estimate = numeric(0), se = numeric(0))
                   vc <- data.frame(gene = integer(0), row = integer(0), col = integer(0), value = numeric(0)) }
write.csv(fe, file.path(dir, "fixef.csv"), row.names = FALSE)
write.csv(vc, file.path(dir, "vcov.csv"), row.names = FALSE)
write.csv(do.call(rbind, pars), file.path(dir, "pars.csv"), row.names = FALSE)
writeLines(format(total, digits = 10), file.path(dir, "loop_seconds.txt"))
writeLines(format(total_cpu, digits = 10), file.path(dir, "loop_cpu_seconds.txt"))
"""


@dataclass
class GlmmTMBResult:
    """glmmTMB NB GLMM fits of every gene of a :class:`GLMMData`.

    Attributes
    ----------
    b, b_se : (n_genes, n_groups); b_cov : (n_genes, n_groups, n_groups)  (NaN where a fit failed)
    sigma_u, sigma_w, theta, loglik : (n_genes,)   donor sd, sample sd (NaN without), NB θ, log-lik
    messages : list of str; gene_seconds : (n_genes,) wall seconds per fit; loop_seconds (R loop, wall),
    wall_seconds (whole call, R start-up and CSV I/O included); gene_cpu_seconds : (n_genes,),
    loop_cpu_seconds: process CPU time of the R loop (``proc.time()`` user + sys), which unlike wall
    time does not grow when other processes share the cores
    """

    data: GLMMData
    b: np.ndarray
    b_se: np.ndarray
    b_cov: np.ndarray
    sigma_u: np.ndarray
    sigma_w: np.ndarray
    theta: np.ndarray
    loglik: np.ndarray
    messages: list
    gene_seconds: np.ndarray
    loop_seconds: float
    wall_seconds: float
    sample_effect: bool = True
    gene_cpu_seconds: np.ndarray | None = None
    loop_cpu_seconds: float = float("nan")

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Tidy DataFrame (:data:`scnotes.glmm.TIDY_COLUMNS` plus ``sigma_w``, ``theta``): MLEs,
        standard errors, Wald z and two-sided normal p for the contrasts, BH q."""
        name = "glmmTMB NB" + (" (sample effect)" if self.sample_effect else "")
        out = tidy_effects(self.data, self.b, cov=self.b_cov, method=name, sigma_u=self.sigma_u, level=level)
        idx = pd.Index(self.data.genes).get_indexer(out["gene"])
        out["sigma_w"], out["theta"] = self.sigma_w[idx], self.theta[idx]
        return out


def _sample_codes(data: GLMMData):
    tab = data.group_table
    if tab["condition"].notna().all():
        cond = tab["condition"].to_numpy()[data.group]
    else:
        cond = np.asarray(data.groups, dtype=object)[data.group]
    donor = np.asarray(data.donors, dtype=object)[data.donor]
    return np.array([f"{d}|{c}" for d, c in zip(donor, cond)], dtype=object)


def fit_glmmtmb(data: GLMMData, sample_effect: bool = True, rscript: str | None = None,
                timeout: float | None = 7200.0, workdir: str | None = None) -> GlmmTMBResult:
    """Fit ``glmmTMB(y ~ 0 + cell_group + offset(log(total)) + (1|donor) [+ (1|sample)], nbinom2)`` per gene.

    Parameters
    ----------
    data : GLMMData (cells; NB sums are not NB, so there is no aggregated shortcut)
    sample_effect : bool
        Add the random effect per sample = donor × condition (donor × group when the
        groups carry no condition), as :class:`scnotes.glmm.NBGLMMVEB` does by default.

    Returns
    -------
    GlmmTMBResult

    Raises
    ------
    RuntimeError : R or glmmTMB missing (the message says how to install), or R failed.
    """
    if not isinstance(data, GLMMData):
        raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
    t0 = time.perf_counter()
    cells = pd.DataFrame({"cell_group": data.group, "donor": np.asarray(data.donors)[data.donor],
                          "sample": _sample_codes(data), "total": data.total})
    counts = pd.DataFrame(data.counts.astype(np.int64), columns=[f"g{j}" for j in range(data.n_genes)])
    tmp_obj, tmp = _run(_GLMMTMB, "glmmTMB", {"cells.csv": cells, "counts.csv": counts,
                                              "n_groups.txt": data.n_groups},
                        args=(int(bool(sample_effect)),), rscript=rscript, timeout=timeout, workdir=workdir)
    with tmp_obj:
        J, G = data.n_genes, data.n_groups
        b = np.full((J, G), np.nan)
        se = np.full((J, G), np.nan)
        cov = np.full((J, G, G), np.nan)
        fe = pd.read_csv(tmp / "fixef.csv")
        if len(fe):
            b[fe.gene, fe.group] = fe.estimate
            se[fe.gene, fe.group] = fe.se
            vc = pd.read_csv(tmp / "vcov.csv")
            cov[vc.gene, vc.row, vc.col] = vc.value
        pars = pd.read_csv(tmp / "pars.csv", keep_default_na=False, na_values=["NA"])
        loop = float((tmp / "loop_seconds.txt").read_text())
        loop_cpu = float((tmp / "loop_cpu_seconds.txt").read_text())
    return GlmmTMBResult(data, b, se, cov, pars.sigma_u.to_numpy(float), pars.sigma_w.to_numpy(float),
                         pars.theta.to_numpy(float), pars.loglik.to_numpy(float),
                         [str(m) for m in pars.messages.fillna("")], pars.seconds.to_numpy(float), loop,
                         time.perf_counter() - t0, bool(sample_effect), pars.cpu_seconds.to_numpy(float),
                         loop_cpu)


# ----------------------------------------------------------------------------- pseudobulk
# One script for every pseudobulk R method. Python builds the design matrix of each cell type
# (_pb_plan: the same matrix goes to edgeR, DESeq2, limma, glmGamPoi and PyDESeq2); R reads
# plan.csv (one row per testable cell type: its design file, its sample rows, whether limma blocks
# on the donor) and writes one row per tested gene (plan, gene index, natural-log lfc, se, p, df).
_PSEUDOBULK = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; method <- args[2]
pkg <- switch(method, edgeR = "edgeR", DESeq2 = "DESeq2", limma = "limma", glmGamPoi = "glmGamPoi")
suppressPackageStartupMessages(library(pkg, character.only = TRUE))
samples <- read.csv(file.path(dir, "samples.csv"), colClasses = c("character", "numeric"))
y <- as.matrix(read.csv(file.path(dir, "counts.csv")))
plan <- read.csv(file.path(dir, "plan.csv"), colClasses = "character")
out <- list(); extra <- list()
t0 <- proc.time()[["elapsed"]]
for (i in seq_len(nrow(plan))) {
  rows <- as.integer(strsplit(plan$rows[i], " ", fixed = TRUE)[[1]])
  X <- as.matrix(read.csv(file.path(dir, plan$design[i])))
  coef <- ncol(X)
  Y <- t(y[rows, , drop = FALSE])
  lib <- samples$lib_size[rows]; donor <- factor(samples$donor[rows])
  keep <- which(rowSums(Y) > 0)
  Yk <- Y[keep, , drop = FALSE]
  note <- character(0); cor <- NA_real_
  r <- tryCatch({
    if (method == "edgeR") {
      d <- estimateDisp(DGEList(Yk, lib.size = lib), X)
      f <- glmQLFit(d, X)
      q <- glmQLFTest(f, coef = coef)
      data.frame(logfc = q$table$logFC * log(2), se = NA_real_, p = q$table$PValue,
                 df = rep_len(q$df.total, nrow(q$table)))
    } else if (method == "DESeq2") {
      dds <- DESeqDataSetFromMatrix(Yk, data.frame(lib = lib), design = X)
      sizeFactors(dds) <- lib / exp(mean(log(lib)))
      dds <- tryCatch(suppressMessages(DESeq(dds, quiet = TRUE)),
                      error = function(e) {
                        note <<- c(note, paste("dispersion trend failed (", conditionMessage(e),
                                               "): gene-wise dispersion estimates used"))
                        dds <- estimateDispersionsGeneEst(dds)
                        dispersions(dds) <- mcols(dds)$dispGeneEst
                        nbinomWaldTest(dds, quiet = TRUE) })
      rr <- results(dds, name = resultsNames(dds)[coef], independentFiltering = FALSE, cooksCutoff = FALSE)
      data.frame(logfc = rr$log2FoldChange * log(2), se = rr$lfcSE * log(2), p = rr$pvalue, df = NA_real_)
    } else if (method == "limma") {
      if (plan$block[i] == "1") {
        v <- voom(Yk, X, lib.size = lib)
        cf <- duplicateCorrelation(v, X, block = donor)
        v <- voom(Yk, X, lib.size = lib, block = donor, correlation = cf$consensus.correlation)
        cf <- duplicateCorrelation(v, X, block = donor)
        cor <- cf$consensus.correlation
        fit <- lmFit(v, X, block = donor, correlation = cor)
      } else {
        fit <- lmFit(voom(Yk, X, lib.size = lib), X)
      }
      fit <- eBayes(fit, robust = TRUE)
      se <- fit$stdev.unscaled[, coef] * sqrt(fit$s2.post)
      data.frame(logfc = fit$coefficients[, coef] * log(2), se = se * log(2), p = fit$p.value[, coef],
                 df = fit$df.total)
    } else {
      fit <- glm_gp(Yk, design = X, size_factors = lib / exp(mean(log(lib))), overdispersion = TRUE)
      contrast_vector <- as.numeric(seq_len(coef) == coef)
      tt <- test_de(fit, contrast = contrast_vector)
      data.frame(logfc = tt$lfc * log(2), se = NA_real_, p = tt$pval, df = tt$df2)
    }
  }, error = function(e) { note <<- c(note, paste("error:", conditionMessage(e))); NULL })
  if (!is.null(r)) out[[length(out) + 1]] <- data.frame(plan = i - 1, gene = keep - 1, r)
  extra[[i]] <- data.frame(plan = i - 1, correlation = cor,
                           note = paste(gsub("[\r\n]", " ", note), collapse = " | "))
}
total <- proc.time()[["elapsed"]] - t0
res <- if (length(out)) do.call(rbind, out) else
  data.frame(plan = integer(0), gene = integer(0), logfc = numeric(0), se = numeric(0), p = numeric(0),
             df = numeric(0))
write.csv(res, file.path(dir, "results.csv"), row.names = FALSE)
write.csv(do.call(rbind, extra), file.path(dir, "extra.csv"), row.names = FALSE)
writeLines(format(total, digits = 10), file.path(dir, "loop_seconds.txt"))
"""


@dataclass
class _CellTypePlan:
    """The design of one testable cell type (see :func:`_pb_plan`)."""

    cell_type: str
    rows: np.ndarray          # positions of its samples in the pseudobulk
    design: pd.DataFrame      # samples × columns, last column "condition" (1 = the other condition)
    block: bool               # limma: block on the donor with duplicateCorrelation
    testable: bool            # residual degrees of freedom left


def tidy_columns() -> list:
    """The columns of every reference table: :data:`TIDY_COLUMNS` with ``df`` after ``upper``
    (whether or not ``TIDY_COLUMNS`` already lists it)."""
    from . import _tidy

    cols = list(dict.fromkeys(_tidy.TIDY_COLUMNS))
    if "df" not in cols:
        cols.insert(cols.index("upper") + 1, "df")
    return cols


def _encode(values: pd.Series) -> np.ndarray:
    """Columns of one sample-level covariate in the rows given: a numeric one centred and scaled
    (one column; none if constant), a categorical one as treatment dummies of the levels present
    (first level dropped; none if one level)."""
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(float)
    if pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype):
        x = values.to_numpy(float)
        sd = x.std()
        return ((x - x.mean()) / sd)[:, None] if sd > 0 else np.zeros((len(x), 0))
    if isinstance(values.dtype, pd.CategoricalDtype):
        levels = [c for c in values.cat.categories if (values == c).any()]
        v = values.astype(object).to_numpy()
    else:
        v = values.astype(str).to_numpy()
        levels = sorted(set(v))
    return np.column_stack([(v == lev).astype(float) for lev in levels[1:]]) if len(levels) > 1 else \
        np.zeros((len(v), 0))


def _rank(m: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(m)) if m.size else 0


def _pb_plan(pb, condition_key, donor_key, cell_type_key, reference, covariate_keys, block=False):
    """Validate a pseudobulk AnnData and build the design of each cell type.

    Design per cell type, columns in this order: intercept, donor (treatment dummies, only when
    some donor has samples in both conditions — paired — and ``block`` is False), the covariates
    (``covariate_keys``: numeric → centred and scaled, else treatment dummies), the condition
    (indicator of the non-reference condition, always the last column: the coefficient tested).
    A covariate that adds no rank to the intercept + donor + condition (+ earlier covariates) — a
    donor-level covariate in a paired design, a constant one, one aliased with the condition — is
    dropped from that cell type's design, with a note. ``block=True`` (limma's donor blocking)
    leaves the donor out of the design; a cell type whose donors are not paired then has no
    block (note). A cell type with one condition is not tested (note); one with no residual
    degrees of freedom gives NaN rows (note).

    Returns (samples, counts, reference, other, plans, notes): ``samples`` the donor and
    ``lib_size`` (obs ``total_counts``) per sample, ``counts`` samples × genes int64, ``plans`` a
    list of :class:`_CellTypePlan`, ``notes`` a list of str.
    """
    obs = pb.obs
    for k, param in ((condition_key, "condition_key"), (donor_key, "donor_key"), (cell_type_key, "cell_type_key")):
        if k not in obs.columns:
            raise key_error("obs key", k, "pb.obs (the pseudobulk)", obs.columns, param)
    covariate_keys = [] if covariate_keys is None else (
        [covariate_keys] if isinstance(covariate_keys, str) else list(covariate_keys))
    for k in covariate_keys:
        if k not in obs.columns:
            raise key_error("covariate", k, "pb.obs (the pseudobulk)", obs.columns, "covariate_keys",
                            " (add sample-level covariates to pb.obs)")
        if k in (condition_key, donor_key, cell_type_key):
            raise ValueError(f"covariate {k!r} is the condition, donor or cell-type key")
        if obs[k].isna().any():
            raise ValueError(f"covariate {k!r} has {int(obs[k].isna().sum())} missing values")
    conds = list(pd.unique(obs[condition_key].astype(str)))
    if len(conds) != 2:
        raise ValueError(f"pseudobulk references compare two conditions; {condition_key!r} has {conds}")
    if reference is None:
        reference = (list(obs[condition_key].cat.categories) if hasattr(obs[condition_key], "cat")
                     else sorted(conds))[0]
    reference = str(reference)
    if reference not in conds:
        raise ValueError(f"reference {reference!r} is not a condition of {condition_key!r}: {conds}")
    other = next(c for c in conds if c != reference)
    if "total_counts" not in obs.columns:
        raise key_error("obs key", "total_counts", "pb.obs (the pseudobulk)", obs.columns, None,
                        " (the library size per sample; scnotes.glmm.pseudobulk adds it)")
    lib = obs["total_counts"].to_numpy(float)
    if not (np.isfinite(lib).all() and (lib > 0).all()):
        raise ValueError("obs['total_counts'] must be positive and finite (the library sizes)")
    donor = obs[donor_key].astype(str).to_numpy()
    cond = obs[condition_key].astype(str).to_numpy()
    ctype = obs[cell_type_key].astype(str).to_numpy()
    x = pb.X.toarray() if hasattr(pb.X, "toarray") else np.asarray(pb.X)
    counts = np.rint(np.asarray(x, dtype=float)).astype(np.int64)
    samples = pd.DataFrame({"donor": donor, "lib_size": lib})
    plans, notes = [], []
    for ct in pd.unique(ctype):
        rows = np.flatnonzero(ctype == ct)
        c = (cond[rows] == other).astype(float)
        if c.min() == c.max():
            notes.append(f"{ct}: one condition only; not tested")
            continue
        d = donor[rows]
        paired = bool(len(set(d[c == 1]) & set(d[c == 0])))
        use_block = bool(block and paired)
        if block and not paired:
            notes.append(f"{ct}: no donor has samples in both conditions; no donor block (~ condition)")
        cols, names = [np.ones(len(rows))], ["Intercept"]
        if paired and not block:
            levels = sorted(set(d))
            for k, lev in enumerate(levels[1:], start=1):
                cols.append((d == lev).astype(float))
                names.append(f"donor{k}")
        base = np.column_stack(cols + [c])
        r = _rank(base)
        for i, key in enumerate(covariate_keys):
            sub = obs[key].iloc[rows]
            enc = _encode(sub)
            if enc.shape[1] == 0:
                notes.append(f"{ct}: covariate {key!r} is constant in this cell type; dropped")
                continue
            if _rank(np.column_stack([base, enc])) < r + enc.shape[1]:
                within = pd.Series(sub.astype(str).to_numpy()).groupby(d).nunique().max() == 1
                why = ("aliased with donor (constant within donor: the donor fixed effects absorb it)"
                       if (paired and not block and within) else
                       "aliased with the condition, donor or earlier covariates")
                notes.append(f"{ct}: covariate {key!r} {why}; dropped")
                continue
            base = np.column_stack([base, enc])
            r += enc.shape[1]
            cols.extend(enc.T)
            names.extend(f"cov{i}_{j}" for j in range(enc.shape[1]))
        cols.append(c)
        names.append("condition")
        design = pd.DataFrame(np.column_stack(cols), columns=names, index=obs.index[rows].astype(str))
        testable = len(rows) > design.shape[1]
        if not testable:
            notes.append(f"{ct}: no residual degrees of freedom ({len(rows)} samples, {design.shape[1]} "
                         "coefficients); not tested")
        plans.append(_CellTypePlan(str(ct), rows, design, use_block, testable))
    return samples, counts, reference, other, plans, notes


def _pb_table(pb, plans, res, reference, other, level, method, inference, t_interval):
    """The tidy table of a pseudobulk reference from per-gene results ``res`` (DataFrame: plan,
    gene (position), logfc, se, p, df), one row per gene of every planned cell type."""
    from scipy import stats

    genes = np.asarray(pb.var_names.astype(str))
    J = len(genes)
    frames = []
    for k, pl in enumerate(plans):
        part = res[res["plan"] == k]
        f = pd.DataFrame({"gene": genes, "cell_type": pl.cell_type})
        for col in ("logfc", "se", "p", "df"):
            v = np.full(J, np.nan)
            v[part["gene"].to_numpy(int)] = part[col].to_numpy(float)
            f[col] = v
        frames.append(f)
    r = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"gene": [], "cell_type": [], "logfc": [], "se": [], "p": [], "df": []})
    cname = f"{other} - {reference}"
    out = pd.DataFrame({"gene": r["gene"].astype(str), "kind": "contrast",
                        "term": r["cell_type"].astype(str) + f": {cname}", "cell_type": r["cell_type"].astype(str),
                        "condition": cname, "estimate": r["logfc"].to_numpy(float), "sd": r["se"].to_numpy(float)})
    df = r["df"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        crit = (stats.t.ppf(0.5 + level / 2, df) if t_interval else
                np.full(len(df), stats.norm.ppf(0.5 + level / 2)))
        out["lower"] = out["estimate"] - crit * out["sd"]
        out["upper"] = out["estimate"] + crit * out["sd"]
        out["df"] = df
        out["z"] = out["estimate"] / out["sd"]
    out["p"] = r["p"].to_numpy(float)
    out["lfsr"] = np.nan
    out["q"] = bh_qvalues(out["p"])
    out["sigma_u"] = np.nan
    out["method"] = method
    out["inference"] = inference
    return out[tidy_columns()].reset_index(drop=True)


_PB_METHODS = {  # method → (package, readable name, inference word, t interval)
    "edgeR": ("edgeR", "pseudobulk edgeR (QL)", "quasi-likelihood F", False),
    "DESeq2": ("DESeq2", "pseudobulk DESeq2", "wald", False),
    "limma": ("limma", "pseudobulk limma-voom", "moderated t", True),
    "glmGamPoi": ("glmGamPoi", "pseudobulk glmGamPoi (QL)", "quasi-likelihood F", False),
}


def _pseudobulk_r(pb, method, condition_key, donor_key, cell_type_key, reference, level, rscript, timeout,
                  workdir, covariate_keys=None, block=False):
    package, name, inference, t_interval = _PB_METHODS[method]
    t0 = time.perf_counter()
    samples, counts, reference, other, plans, notes = _pb_plan(pb, condition_key, donor_key, cell_type_key,
                                                               reference, covariate_keys, block=block)
    run = [(k, pl) for k, pl in enumerate(plans) if pl.testable]
    loop, correlation = 0.0, {}
    res = pd.DataFrame({"plan": [], "gene": [], "logfc": [], "se": [], "p": [], "df": []})
    if run:
        files = {"samples.csv": samples,
                 "counts.csv": pd.DataFrame(counts, columns=[f"g{j}" for j in range(counts.shape[1])]),
                 "plan.csv": pd.DataFrame({"cell_type": [pl.cell_type for _, pl in run],
                                           "design": [f"design{k}.csv" for k, _ in run],
                                           "rows": [" ".join(map(str, pl.rows + 1)) for _, pl in run],
                                           "block": [str(int(pl.block)) for _, pl in run]})}
        files.update({f"design{k}.csv": pl.design for k, pl in run})
        tmp_obj, tmp = _run(_PSEUDOBULK, package, files, args=(method,), rscript=rscript, timeout=timeout,
                            workdir=workdir)
        with tmp_obj:
            res = pd.read_csv(tmp / "results.csv", na_values=["NA"])
            extra = pd.read_csv(tmp / "extra.csv", keep_default_na=False, na_values=["NA"])
            loop = float((tmp / "loop_seconds.txt").read_text())
        plan_of = np.array([k for k, _ in run])
        res["plan"] = plan_of[res["plan"].to_numpy(int)]
        for i, row in extra.iterrows():
            ct = run[i][1].cell_type
            if isinstance(row["note"], str) and row["note"]:
                notes.append(f"{ct}: {row['note']}")
            if run[i][1].block:
                correlation[ct] = float(row["correlation"])
    if method == "limma" and block:
        name += " (donor block)"
    out = _pb_table(pb, plans, res, reference, other, level, name, inference, t_interval)
    out.attrs["loop_seconds"] = loop
    out.attrs["wall_seconds"] = time.perf_counter() - t0
    out.attrs["notes"] = notes
    if method == "limma" and block:
        out.attrs["correlation"] = correlation
    out.attrs["designs"] = {pl.cell_type: list(pl.design.columns) for pl in plans}
    return out


_PB_RETURNS = """
    Returns
    -------
    Tidy DataFrame (:func:`tidy_columns`: :data:`scnotes.glmm.TIDY_COLUMNS` with ``df``), contrast
    rows only, one per gene and tested cell type: ``estimate`` the log fold change (natural log),
    ``p``, ``q`` (BH over every row), ``method``, ``inference``. Genes with no counts in a cell type,
    and cell types without residual degrees of freedom, are NaN. ``attrs``: ``loop_seconds`` (the
    R loop, wall), ``wall_seconds`` (the whole call), ``notes`` (list of str: covariates dropped,
    cell types not tested, fallbacks, errors), ``designs`` (cell type → design column names:
    ``Intercept``, ``donor<k>``, ``cov<i>_<j>`` for covariate ``covariate_keys[i]``, ``condition``).
"""


def fit_edger(pb, condition_key: str = "condition", donor_key: str = "donor", cell_type_key: str = "cell_type",
              reference: str | None = None, level: float = 0.95, rscript: str | None = None,
              timeout: float | None = 3600.0, workdir: str | None = None,
              covariate_keys: list | None = None) -> pd.DataFrame:
    """edgeR quasi-likelihood test of the condition on pseudobulk sums, per cell type.

    ``estimateDisp(DGEList(Y, lib.size = total_counts), X)``, ``glmQLFit``, ``glmQLFTest`` of
    the condition coefficient (Chen, Lun & Smyth 2016; edgeR 3.x QL pipeline). No TMM.

    Parameters
    ----------
    pb : AnnData, samples × genes summed counts, from :func:`scnotes.glmm.pseudobulk`
        (``obs``: the three keys and ``total_counts``, the library size of each sample).
    reference : the reference condition (default: the first category).
    covariate_keys : obs columns of ``pb`` with sample-level covariates (sex, batch, age, …) added
        as fixed effects: ``~ donor + covariates + condition`` (paired) / ``~ covariates +
        condition``; a covariate aliased with the donor (or constant) in a cell type is dropped
        there, with a note. Default None: the design of the earlier versions.
    level : coverage of the interval (only where ``sd`` is given).
    <returns>
    ``sd``, ``lower``, ``upper``, ``z`` are NaN (edgeR's QL test gives no standard error); ``df``
    is the QL F test's denominator degrees of freedom (``df.total`` = prior + residual df).

    Raises
    ------
    RuntimeError : R or edgeR missing (the message says how to install). ValueError : not two conditions.
    """
    return _pseudobulk_r(pb, "edgeR", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir, covariate_keys)


def fit_deseq2(pb, condition_key: str = "condition", donor_key: str = "donor", cell_type_key: str = "cell_type",
               reference: str | None = None, level: float = 0.95, rscript: str | None = None,
               timeout: float | None = 3600.0, workdir: str | None = None,
               covariate_keys: list | None = None) -> pd.DataFrame:
    """DESeq2 Wald test of the condition on pseudobulk sums, per cell type (arguments as :func:`fit_edger`).

    ``DESeqDataSetFromMatrix(Y, design = X)``, ``sizeFactors <- lib / geomean(lib)``, ``DESeq``,
    ``results(name = "condition", independentFiltering = FALSE, cooksCutoff = FALSE)``
    (Love, Huber & Anders 2014). Where the parametric dispersion trend cannot be fitted (few
    genes), gene-wise dispersion estimates are used (with a note).
    <returns>
    ``sd`` is DESeq2's ``lfcSE`` (natural log), ``z`` the Wald statistic, the interval normal,
    ``df`` NaN (a Wald test).

    Raises
    ------
    RuntimeError : R or DESeq2 missing (the message says how to install). ValueError : not two conditions.
    """
    return _pseudobulk_r(pb, "DESeq2", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir, covariate_keys)


def fit_limma_voom(pb, condition_key: str = "condition", donor_key: str = "donor",
                   cell_type_key: str = "cell_type", reference: str | None = None, block: str = "auto",
                   covariate_keys: list | None = None, level: float = 0.95, rscript: str | None = None,
                   timeout: float | None = 3600.0, workdir: str | None = None) -> pd.DataFrame:
    """limma-voom on pseudobulk sums, per cell type (Law, Chen, Shi & Smyth 2014, Genome Biol 15:R29).

    ``v <- voom(Y, X, lib.size = total_counts)`` (the same as ``voom(DGEList(Y, lib.size = …), X)``:
    no TMM), ``lmFit(v, X)``, ``eBayes(fit, robust = TRUE)``; the moderated t of the condition
    coefficient with ``df.total`` degrees of freedom.

    Parameters
    ----------
    block : {"auto", "fixed", "donor"}
        How the donor enters a cell type whose donors have samples in both conditions (paired):

        * ``"fixed"``: donor fixed effects, ``X = ~ donor + covariates + condition``, as edgeR and
          DESeq2 here — the paired analysis, exact for within-donor contrasts.
        * ``"donor"``: ``X = ~ covariates + condition`` with the donor as a random block
          (the "dream-like" analysis; Smyth, Michaud & Scott 2005): ``voom``,
          ``duplicateCorrelation(v, X, block = donor)``, ``voom`` again with that consensus
          correlation, ``duplicateCorrelation`` again, ``lmFit(v, X, block = donor, correlation =
          consensus)`` (the limma User's Guide recipe). It uses between-donor information too and
          keeps donor-level covariates (sex) estimable; its single consensus correlation is shared
          by all genes of the cell type (``attrs["correlation"]``).
        * ``"auto"`` (default) = ``"fixed"``: the design of the other pseudobulk references, so
          the methods differ only in their test.

        Unpaired cell types (each donor in one condition) have no donor term with any setting
        (``~ covariates + condition``): a block of single samples has no within-block correlation.
    Other arguments as :func:`fit_edger`.
    <returns>
    ``estimate`` is voom's log2-CPM coefficient × ln 2, ``sd`` its standard error
    ``stdev.unscaled · sqrt(s2.post)`` × ln 2, ``z`` the moderated t, ``df`` its ``df.total``,
    the interval ``estimate ± t_{df}((1+level)/2) · sd`` (limma's ``topTable(confint = level)``);
    ``method`` "pseudobulk limma-voom" (+ " (donor block)"), ``inference`` "moderated t".

    Raises
    ------
    RuntimeError : R or limma missing. ValueError : not two conditions, unknown ``block``.
    """
    if block not in ("auto", "fixed", "donor"):
        raise ValueError(f"block must be 'auto', 'fixed' or 'donor', got {block!r}")
    return _pseudobulk_r(pb, "limma", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir, covariate_keys, block=(block == "donor"))


def fit_glmgampoi(pb, condition_key: str = "condition", donor_key: str = "donor",
                  cell_type_key: str = "cell_type", reference: str | None = None,
                  covariate_keys: list | None = None, level: float = 0.95, rscript: str | None = None,
                  timeout: float | None = 3600.0, workdir: str | None = None) -> pd.DataFrame:
    """glmGamPoi quasi-likelihood test on pseudobulk sums, per cell type (Ahlmann-Eltze & Huber 2021,
    Bioinformatics 36:5701; arguments as :func:`fit_edger`).

    ``fit <- glm_gp(Y, design = X, size_factors = lib / geomean(lib), overdispersion = TRUE)``
    (Gamma-Poisson GLM, overdispersion shrunk towards a trend), ``test_de(fit, contrast = <the
    condition column>)``: the quasi-likelihood F test (Lund et al. 2012) with ``df1 = 1``.
    The pseudobulk is ours (``pseudobulk_by`` is not used), so the design and library sizes are
    those of the other references.
    <returns>
    ``estimate`` is ``test_de``'s ``lfc`` (which is log2: ``Beta %*% contrast / log(2)``) × ln 2 =
    the natural-log coefficient; ``sd``, ``lower``, ``upper``, ``z`` NaN (no standard error);
    ``df`` the F test's denominator degrees of freedom ``df2`` (very large when the QL
    dispersions shrink fully to their trend); ``inference`` "quasi-likelihood F".

    Raises
    ------
    RuntimeError : R or glmGamPoi missing. ValueError : not two conditions.
    """
    return _pseudobulk_r(pb, "glmGamPoi", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir, covariate_keys)


for _f in (fit_edger, fit_deseq2, fit_limma_voom, fit_glmgampoi):
    _f.__doc__ = _f.__doc__.replace("    <returns>\n", _PB_RETURNS)
del _f
