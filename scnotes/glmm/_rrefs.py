"""Live R references for differential expression: glmmTMB (NB GLMM) and pseudobulk edgeR / DESeq2.

Each runs in one ``Rscript`` process (like :func:`scnotes.glmm.fit_lme4`), with
the data written to a temporary directory as CSV:

* :func:`fit_glmmtmb`: per gene, ``glmmTMB(y ~ 0 + cell_group + offset(log(total))
  + (1 | donor) [+ (1 | sample)], family = nbinom2)`` (Brooks et al. 2017, R J 9:378;
  Laplace approximation; variance μ + μ²/θ) on the cells. Wald z and p for the
  contrasts from the fixed-effect covariance.
* :func:`fit_edger`: per cell type, edgeR's quasi-likelihood pipeline on the
  pseudobulk sums (Chen, Lun & Smyth 2016, F1000Res 5:1438; Lun & Smyth 2017):
  ``estimateDisp``, ``glmQLFit``, ``glmQLFTest`` of the condition coefficient.
* :func:`fit_deseq2`: per cell type, ``DESeq`` with its Wald test on the
  pseudobulk sums (Love, Huber & Anders 2014, Genome Biol 15:550).

Pseudobulk design per cell type: ``~ donor + condition`` when some donor appears
in both conditions (paired), else ``~ condition``. Library sizes are the summed
per-cell totals (``total_counts``) of each sample, not the column sums of the
genes tested (which, for a panel of 100 genes with strong interferon response,
would absorb the response); edgeR's TMM and DESeq2's median-of-ratios are therefore
not applied. Log fold changes are reported on the natural-log scale (DESeq2's
log2 × ln 2; edgeR's logFC × ln 2) so they compare with the GLMM contrasts.

Requires R with ``glmmTMB``, ``edgeR``, ``DESeq2`` (Debian/Ubuntu:
``apt-get install r-cran-glmmtmb r-bioc-edger r-bioc-deseq2``, or
``bash scripts/install_r.sh``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._design import GLMMData
from ._rscript import r_package_available, run_r_script
from ._tidy import TIDY_COLUMNS, bh_qvalues, tidy_effects

__all__ = ["fit_glmmtmb", "fit_edger", "fit_deseq2", "r_package_available", "GlmmTMBResult",
           "R_INSTALL_HINTS"]

R_INSTALL_HINTS = {
    "glmmTMB": "apt-get install r-cran-glmmtmb (Debian/Ubuntu) or Rscript -e 'install.packages(\"glmmTMB\")'",
    "edgeR": "apt-get install r-bioc-edger (Debian/Ubuntu) or BiocManager::install(\"edgeR\") in R",
    "DESeq2": "apt-get install r-bioc-deseq2 (Debian/Ubuntu) or BiocManager::install(\"DESeq2\") in R",
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
_PSEUDOBULK = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; method <- args[2]
suppressPackageStartupMessages(library(if (method == "edgeR") "edgeR" else "DESeq2", character.only = TRUE))
samples <- read.csv(file.path(dir, "samples.csv"), colClasses = "character")
samples$lib_size <- as.numeric(samples$lib_size)
y <- as.matrix(read.csv(file.path(dir, "counts.csv"), check.names = FALSE))
ref <- readLines(file.path(dir, "reference.txt"))
out <- list()
t0 <- proc.time()[["elapsed"]]
for (ct in unique(samples$cell_type)) {
  s <- samples$cell_type == ct
  sm <- samples[s, ]; Y <- t(y[s, , drop = FALSE])
  sm$condition <- relevel(factor(sm$condition), ref = ref)
  sm$donor <- factor(sm$donor)
  if (nlevels(sm$condition) < 2) next
  paired <- any(table(sm$donor, sm$condition)[, 1] > 0 & table(sm$donor, sm$condition)[, 2] > 0)
  design <- if (paired) model.matrix(~ donor + condition, sm) else model.matrix(~ condition, sm)
  coef <- ncol(design)
  keep <- rowSums(Y) > 0
  res <- data.frame(gene = rownames(Y), cell_type = ct, logfc = NA_real_, se = NA_real_, p = NA_real_,
                    df = NA_real_, note = "")
  if (ncol(Y) <= ncol(design)) { res$note <- "no residual degrees of freedom"; out[[ct]] <- res; next }
  r <- tryCatch({
    if (method == "edgeR") {
      d <- DGEList(Y[keep, , drop = FALSE], lib.size = sm$lib_size)
      d <- estimateDisp(d, design)
      f <- glmQLFit(d, design)
      tt <- topTags(glmQLFTest(f, coef = coef), n = Inf, sort.by = "none")$table
      dft <- if (length(f$df.total) == nrow(tt)) f$df.total else NA_real_
      data.frame(gene = rownames(tt), logfc = tt$logFC * log(2), se = NA_real_, p = tt$PValue, df = dft)
    } else {
      dds <- DESeqDataSetFromMatrix(Y[keep, , drop = FALSE], sm, design = design)
      sizeFactors(dds) <- sm$lib_size / exp(mean(log(sm$lib_size)))
      dds <- tryCatch(suppressMessages(DESeq(dds, quiet = TRUE)),
                      error = function(e) { dds <- estimateDispersionsGeneEst(dds)
                                            dispersions(dds) <- mcols(dds)$dispGeneEst
                                            nbinomWaldTest(dds, quiet = TRUE) })
      rr <- results(dds, name = resultsNames(dds)[coef], independentFiltering = FALSE, cooksCutoff = FALSE)
      data.frame(gene = rownames(rr), logfc = rr$log2FoldChange * log(2), se = rr$lfcSE * log(2),
                 p = rr$pvalue, df = NA_real_)
    }
  }, error = function(e) { res$note <<- paste("error:", conditionMessage(e)); NULL })
  if (!is.null(r)) {
    m <- match(res$gene, r$gene)
    res$logfc <- r$logfc[m]; res$se <- r$se[m]; res$p <- r$p[m]; res$df <- r$df[m]
  }
  out[[ct]] <- res
}
total <- proc.time()[["elapsed"]] - t0
write.csv(do.call(rbind, out), file.path(dir, "results.csv"), row.names = FALSE)
writeLines(format(total, digits = 10), file.path(dir, "loop_seconds.txt"))
"""


def _pseudobulk_r(pb, method, condition_key, donor_key, cell_type_key, reference, level, rscript, timeout,
                  workdir):
    from scipy import stats

    obs = pb.obs
    conds = list(pd.unique(obs[condition_key].astype(str)))
    if reference is None:
        reference = (list(obs[condition_key].cat.categories) if hasattr(obs[condition_key], "cat")
                     else sorted(conds))[0]
    if len(conds) != 2:
        raise ValueError(f"pseudobulk {method} compares two conditions; {condition_key!r} has {conds}")
    other = [c for c in conds if c != reference][0]
    if "total_counts" not in obs.columns:
        raise KeyError("the pseudobulk AnnData needs obs['total_counts'] (library size per sample; "
                       "scnotes.glmm.pseudobulk adds it)")
    samples = pd.DataFrame({"cell_type": obs[cell_type_key].astype(str).to_numpy(),
                            "donor": obs[donor_key].astype(str).to_numpy(),
                            "condition": obs[condition_key].astype(str).to_numpy(),
                            "lib_size": obs["total_counts"].to_numpy(float)})
    x = pb.X.toarray() if hasattr(pb.X, "toarray") else np.asarray(pb.X)
    counts = pd.DataFrame(np.rint(x).astype(np.int64), columns=list(pb.var_names))
    t0 = time.perf_counter()
    tmp_obj, tmp = _run(_PSEUDOBULK, method, {"samples.csv": samples, "counts.csv": counts,
                                              "reference.txt": reference},
                        args=(method,), rscript=rscript, timeout=timeout, workdir=workdir)
    with tmp_obj:
        res = pd.read_csv(tmp / "results.csv", keep_default_na=False, na_values=["NA"],
                          dtype={"gene": str, "cell_type": str})
        loop = float((tmp / "loop_seconds.txt").read_text())
    zq = stats.norm.ppf(0.5 + level / 2)
    out = pd.DataFrame({"gene": res["gene"], "kind": "contrast",
                        "term": res["cell_type"] + f": {other} - {reference}", "cell_type": res["cell_type"],
                        "condition": f"{other} - {reference}", "estimate": res["logfc"], "sd": res["se"]})
    out["lower"] = out["estimate"] - zq * out["sd"]
    out["upper"] = out["estimate"] + zq * out["sd"]
    out["z"] = out["estimate"] / out["sd"]
    out["p"] = res["p"].to_numpy(float)
    out["lfsr"] = np.nan
    out["q"] = bh_qvalues(out["p"])
    out["sigma_u"] = np.nan
    out["method"] = f"pseudobulk {method}" + (" (QL)" if method == "edgeR" else "")
    out["inference"] = "quasi-likelihood F" if method == "edgeR" else "wald"
    out = out[TIDY_COLUMNS]
    out.attrs["loop_seconds"] = loop
    out.attrs["wall_seconds"] = time.perf_counter() - t0
    out.attrs["notes"] = [n for n in res.get("note", pd.Series(dtype=str)).fillna("").unique() if n]
    return out


def fit_edger(pb, condition_key: str = "condition", donor_key: str = "donor", cell_type_key: str = "cell_type",
              reference: str | None = None, level: float = 0.95, rscript: str | None = None,
              timeout: float | None = 3600.0, workdir: str | None = None) -> pd.DataFrame:
    """edgeR quasi-likelihood test of the condition on pseudobulk sums, per cell type.

    Parameters
    ----------
    pb : AnnData, samples × genes summed counts, from :func:`scnotes.glmm.pseudobulk`
        (``obs``: the three keys and ``total_counts``, the library size of each sample).
    reference : the reference condition (default: the first category).

    Returns
    -------
    Tidy DataFrame (:data:`scnotes.glmm.TIDY_COLUMNS`), contrast rows only: ``estimate`` the
    log fold change (natural log), ``sd`` NaN (edgeR's QL test gives no standard error), ``p``
    the QL F-test p-value, ``q`` BH over every row. ``attrs``: ``loop_seconds``, ``wall_seconds``,
    ``notes`` (cell types edgeR could not test, and why). Genes with no counts in a cell type are NaN.

    Raises
    ------
    RuntimeError : R or edgeR missing (the message says how to install). ValueError : not two conditions.
    """
    return _pseudobulk_r(pb, "edgeR", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir)


def fit_deseq2(pb, condition_key: str = "condition", donor_key: str = "donor", cell_type_key: str = "cell_type",
               reference: str | None = None, level: float = 0.95, rscript: str | None = None,
               timeout: float | None = 3600.0, workdir: str | None = None) -> pd.DataFrame:
    """DESeq2 Wald test of the condition on pseudobulk sums, per cell type (as :func:`fit_edger`;
    ``sd`` is DESeq2's ``lfcSE`` on the natural-log scale). Where the parametric dispersion trend
    cannot be fitted (few genes), gene-wise dispersion estimates are used.

    Raises
    ------
    RuntimeError : R or DESeq2 missing (the message says how to install). ValueError : not two conditions.
    """
    return _pseudobulk_r(pb, "DESeq2", condition_key, donor_key, cell_type_key, reference, level, rscript,
                         timeout, workdir)
