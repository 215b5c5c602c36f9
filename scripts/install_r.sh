#!/usr/bin/env bash
# Install R and the R packages used live as references:
#   lme4     (Poisson GLMM chapter),
#   glmmTMB  (NB GLMM), edgeR, DESeq2, limma (voom) and glmGamPoi (pseudobulk) for
#   "Is the GLMM calibrated?" (scnotes.glmm._rrefs).
# Debian/Ubuntu: apt packages r-base-core r-cran-lme4 r-cran-glmmtmb r-bioc-edger r-bioc-deseq2
#   r-bioc-limma r-bioc-glmgampoi (Debian bookworm: limma 3.54.1, glmGamPoi 1.10.2).
# Elsewhere: install R (https://cran.r-project.org), then in R:
#   install.packages(c("lme4", "glmmTMB")); BiocManager::install(c("edgeR", "DESeq2", "limma", "glmGamPoi"))
set -u
PKGS_R="lme4 glmmTMB edgeR DESeq2 limma glmGamPoi"
have_all() {
  command -v Rscript >/dev/null 2>&1 || return 1
  for p in $PKGS_R; do
    Rscript -e "quit(status = !requireNamespace(\"$p\", quietly = TRUE))" >/dev/null 2>&1 || return 1
  done
}
if have_all; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  APT="r-base-core r-cran-lme4 r-cran-glmmtmb r-bioc-edger r-bioc-deseq2 r-bioc-limma r-bioc-glmgampoi"
  echo "installing R and its reference packages from apt ($APT)..."
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $APT >/dev/null; then
    have_all && exit 0
  fi
fi
for p in $PKGS_R; do
  if ! (command -v Rscript >/dev/null 2>&1 && Rscript -e "quit(status = !requireNamespace(\"$p\", quietly = TRUE))" >/dev/null 2>&1); then
    echo "WARNING: R package $p is not available; comparisons that need it will be skipped." >&2
  fi
done
echo "         Install R, then in R: install.packages(c(\"lme4\", \"glmmTMB\")); BiocManager::install(c(\"edgeR\", \"DESeq2\", \"limma\", \"glmGamPoi\"))" >&2
exit 0
