#!/usr/bin/env bash
# Install R and lme4 (used live as the reference for the Poisson GLMM chapter).
# Debian/Ubuntu: apt packages r-base-core and r-cran-lme4. Elsewhere: install R
# (https://cran.r-project.org) and run install.packages("lme4").
set -u
if command -v Rscript >/dev/null 2>&1 && Rscript -e 'quit(status = !requireNamespace("lme4", quietly = TRUE))' >/dev/null 2>&1; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  echo "installing R and lme4 from apt (r-base-core r-cran-lme4)..."
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  if DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends r-base-core r-cran-lme4 >/dev/null; then
    exit 0
  fi
fi
echo "WARNING: could not install R with lme4; lme4 comparisons will be skipped." >&2
echo "         Install R and then run: Rscript -e 'install.packages(\"lme4\")'" >&2
exit 0
