"""lme4 as the reference: ``glmer`` run live through ``Rscript``, one process for all genes.

For each gene the R script fits (Bates et al. 2015, J Stat Softw 67(1); Laplace
approximation by default, adaptive Gauss-Hermite with ``nAGQ > 1``)::

    glmer(y ~ 0 + cell_group + offset(log(total)) + (1 | donor), family = poisson)

and writes back fixed effects (estimate, standard error, covariance), the
conditional modes of the donor effects with their conditional sds
(``ranef(fit, condVar = TRUE)``), σ_u and the log-likelihood. The timing of the
gene loop is measured inside R (``proc.time``), so R's start-up can be
excluded from comparisons.

Requires R with the ``lme4`` package (Debian/Ubuntu: ``apt-get install
r-base-core r-cran-lme4``; elsewhere ``install.packages("lme4")`` in R).
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._design import GLMMData
from ._rscript import r_package_available, rscript_path, run_r_script
from ._tidy import tidy_effects

__all__ = ["lme4_available", "fit_lme4", "Lme4Result", "INSTALL_HINT", "r_versions"]

INSTALL_HINT = ("install R and lme4: on Debian/Ubuntu `sudo apt-get install r-base-core r-cran-lme4` "
                "(or `bash scripts/install_r.sh` in the scnotes repository); elsewhere install R from "
                "https://cran.r-project.org and run `Rscript -e 'install.packages(\"lme4\")'`")

_R_SCRIPT = r"""
args <- commandArgs(trailingOnly = TRUE)
dir <- args[1]; nagq <- as.integer(args[2])
suppressPackageStartupMessages(library(lme4))
cells <- read.csv(file.path(dir, "cells.csv"))
y <- as.matrix(read.csv(file.path(dir, "counts.csv"), check.names = FALSE))
G <- as.integer(readLines(file.path(dir, "n_groups.txt")))
cells$cell_group <- factor(cells$cell_group, levels = 0:(G - 1))
cells$donor <- factor(cells$donor)
fe <- list(); vc <- list(); re <- list(); pars <- list()
t0 <- proc.time()[["elapsed"]]
for (j in seq_len(ncol(y))) {
  cells$y <- y[, j]
  msgs <- character(0)
  tj <- proc.time()[["elapsed"]]
  fit <- withCallingHandlers(
    tryCatch(glmer(y ~ 0 + cell_group + offset(log(total)) + (1 | donor), data = cells,
                   family = poisson, nAGQ = nagq),
             error = function(e) { msgs <<- c(msgs, paste("error:", conditionMessage(e))); NULL }),
    warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") },
    message = function(m) { msgs <<- c(msgs, conditionMessage(m)); invokeRestart("muffleMessage") })
  secs <- proc.time()[["elapsed"]] - tj
  if (!is.null(fit)) {
    cf <- summary(fit)$coefficients
    fe[[j]] <- data.frame(gene = j - 1, group = seq_len(nrow(cf)) - 1, estimate = cf[, 1], se = cf[, 2])
    V <- as.matrix(vcov(fit))
    vc[[j]] <- data.frame(gene = j - 1, row = rep(seq_len(G) - 1, G), col = rep(seq_len(G) - 1, each = G),
                          value = as.vector(V))
    r <- ranef(fit, condVar = TRUE)$donor
    pv <- attr(r, "postVar")
    re[[j]] <- data.frame(gene = j - 1, donor = rownames(r), mode = r[, 1], sd = sqrt(pv[1, 1, ]))
    su <- as.data.frame(VarCorr(fit))$sdcor[1]
    ll <- as.numeric(logLik(fit))
    sing <- isSingular(fit)
  } else { su <- NA; ll <- NA; sing <- NA }
  pars[[j]] <- data.frame(gene = j - 1, sigma_u = su, loglik = ll, singular = sing, seconds = secs,
                          messages = paste(gsub("[\r\n]", " ", msgs), collapse = " | "))
}
total <- proc.time()[["elapsed"]] - t0
write.csv(do.call(rbind, fe), file.path(dir, "fixef.csv"), row.names = FALSE)
write.csv(do.call(rbind, vc), file.path(dir, "vcov.csv"), row.names = FALSE)
write.csv(do.call(rbind, re), file.path(dir, "ranef.csv"), row.names = FALSE)
write.csv(do.call(rbind, pars), file.path(dir, "pars.csv"), row.names = FALSE)
writeLines(format(total, digits = 10), file.path(dir, "loop_seconds.txt"))
"""


def lme4_available(rscript: str | None = None) -> bool:
    """Whether ``Rscript`` is on the PATH and can load ``lme4``."""
    return r_package_available("lme4", rscript)


def r_versions(packages=("lme4",), rscript: str | None = None):
    """Versions of R and of R ``packages``, as a one-column DataFrame (``version``)
    indexed ``R``, ``lme4``, … — the same shape as
    :func:`scnotes.report.package_versions`, so a chapter's closing cell can stack
    the two. Without ``Rscript`` every entry reads ``"not installed"``; a missing
    package reads ``"not installed"`` too.
    """
    names = ["R", *packages]
    out = dict.fromkeys(names, "not installed")
    exe = rscript_path(rscript)
    if exe is not None:
        pk = ", ".join(f'"{p}"' for p in packages)
        code = ('cat(paste0("R=", paste(R.version$major, R.version$minor, sep = "."), "\\n")); '
                f'for (p in c({pk})) cat(paste0(p, "=", if (requireNamespace(p, quietly = TRUE)) '
                'utils::packageDescription(p)$Version else "not installed", "\\n"))')
        try:
            r = subprocess.run([exe, "--vanilla", "-e", code], capture_output=True, text=True, timeout=120)
            for line in r.stdout.splitlines():
                k, _, v = line.partition("=")
                if k in out and v:
                    out[k] = v.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    return pd.DataFrame({"version": out})


@dataclass
class Lme4Result:
    """lme4 fits for every gene of a :class:`GLMMData`.

    Attributes
    ----------
    b : ndarray (n_genes, n_groups)          fixed-effect estimates (NaN where glmer failed)
    b_se : ndarray (n_genes, n_groups)       standard errors
    b_cov : ndarray (n_genes, n_groups, n_groups)   ``vcov(fit)``
    u_mode, u_sd : ndarray (n_genes, n_donors)       conditional modes and sds of the donor effects
    sigma_u, loglik : ndarray (n_genes,)     σ_u (sd scale) and the log-likelihood (nats)
    singular : ndarray (n_genes,) bool       ``isSingular(fit)`` (σ_u on the boundary 0)
    messages : list of str                   warnings/messages from glmer per gene
    loop_seconds : float                     time of the R loop over genes (excludes R start-up)
    wall_seconds : float                     whole call (writing data, R start-up, loop, reading back)
    """

    data: GLMMData
    b: np.ndarray
    b_se: np.ndarray
    b_cov: np.ndarray
    u_mode: np.ndarray
    u_sd: np.ndarray
    sigma_u: np.ndarray
    loglik: np.ndarray
    singular: np.ndarray
    messages: list
    gene_seconds: np.ndarray
    loop_seconds: float
    wall_seconds: float

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Tidy DataFrame (same columns as the VEB/NUTS summaries), Wald intervals."""
        return tidy_effects(self.data, self.b, cov=self.b_cov, method="lme4", sigma_u=self.sigma_u,
                            level=level)


def fit_lme4(data: GLMMData, nAGQ: int = 1, aggregate: bool = False, rscript: str | None = None,
             timeout: float | None = 3600.0, workdir: str | None = None) -> Lme4Result:
    """Fit ``glmer(y ~ 0 + cell_group + offset(log(total)) + (1 | donor), poisson)`` per gene.

    Parameters
    ----------
    data : GLMMData
        All its genes are fitted in one ``Rscript`` process (a loop in R).
    nAGQ : int
        Quadrature points (1 = Laplace, lme4's default).
    aggregate : bool
        Fit the per (group, donor) sums instead of the cells. Same estimates,
        standard errors and σ_u (Poisson sums are Poisson and the rate is
        constant within a (group, donor) cell); the log-likelihood differs by
        the constant Σ_i [y_i ln s_i − ln y_i!] − Σ_gd [Y_gd ln S_gd − ln Y_gd!].
    rscript : str, optional
        The ``Rscript`` executable (default ``$RSCRIPT`` or ``Rscript`` on the PATH).

    Returns
    -------
    Lme4Result

    Raises
    ------
    RuntimeError
        R or lme4 is missing (the message says how to install them), or the
        R script failed (its stderr is included).
    """
    if not isinstance(data, GLMMData):
        raise TypeError("data must be a GLMMData (see scnotes.glmm.glmm_data)")
    t0 = time.perf_counter()
    if aggregate:
        st = data.stats()
        gi, di = np.nonzero(st.n)
        cells = pd.DataFrame({"cell_group": gi, "donor": np.asarray(data.donors)[di],
                              "total": st.S[gi, di]})
        y = st.Y[:, gi, di].T
    else:
        cells = pd.DataFrame({"cell_group": data.group, "donor": np.asarray(data.donors)[data.donor],
                              "total": data.total})
        y = data.counts
    counts = pd.DataFrame(y.astype(np.int64), columns=[f"g{j}" for j in range(data.n_genes)])
    tmp_obj, tmp = run_r_script(_R_SCRIPT, "lme4", {"cells.csv": cells, "counts.csv": counts,
                                                    "n_groups.txt": data.n_groups},
                                f"R package lme4 is not installed; {INSTALL_HINT}", args=(int(nAGQ),),
                                rscript=rscript, timeout=timeout, workdir=workdir)
    with tmp_obj:
        pars = pd.read_csv(tmp / "pars.csv", keep_default_na=False, na_values=["NA"])
        J, G, D = data.n_genes, data.n_groups, data.n_donors
        b = np.full((J, G), np.nan)
        se = np.full((J, G), np.nan)
        cov = np.full((J, G, G), np.nan)
        um = np.full((J, D), np.nan)
        usd = np.full((J, D), np.nan)
        if (tmp / "fixef.csv").stat().st_size > 5:
            fe = pd.read_csv(tmp / "fixef.csv")
            b[fe.gene, fe.group] = fe.estimate
            se[fe.gene, fe.group] = fe.se
            vc = pd.read_csv(tmp / "vcov.csv")
            cov[vc.gene, vc.row, vc.col] = vc.value
            re = pd.read_csv(tmp / "ranef.csv", dtype={"donor": str})
            didx = {d: k for k, d in enumerate(data.donors)}
            um[re.gene, re.donor.map(didx)] = re["mode"]
            usd[re.gene, re.donor.map(didx)] = re["sd"]
        loop = float((tmp / "loop_seconds.txt").read_text())
    return Lme4Result(data, b, se, cov, um, usd, pars.sigma_u.to_numpy(float), pars.loglik.to_numpy(float),
                      pars.singular.astype(str).str.upper().eq("TRUE").to_numpy(),
                      [str(m) for m in pars.messages.fillna("")], pars.seconds.to_numpy(float), loop,
                      time.perf_counter() - t0)
