"""Poisson GLMM for differential expression (seed "Poisson GLMM for differential expression").

``y_ij ~ Poisson(s_i exp(b_{j,g(i)} + u_{j,d(i)}))``, ``u_jd ~ N(0, σ_uj²)``: cell-group
fixed effects, donor random effects, the cell's total count as offset.

- :func:`glmm_data`, :func:`glmm_data_from_adata`, :func:`complete_cell_types`: validated design (:class:`GLMMData`;
  :class:`GLMMDesign` is what a fitted model keeps of it)
- :func:`gls_fixed_effects`, :func:`random_effects_posterior`, :func:`lmm_marginal_loglik`,
  :func:`fit_lmm`: the Gaussian LMM closed forms the seed derives
- :class:`PoissonGLMMVEB`, :func:`fit_veb`: variational empirical Bayes (factorised,
  full-rank or low-rank guide; minibatch or full batch; MC or exact expectation; save/load)
- :class:`NBGLMMVEB`, :func:`fit_nb_veb`, :func:`fit_genes_nb`, :func:`simulate_nb_glmm`: the
  negative-binomial GLMM (θ per gene shrunk to a mean trend, a sample effect per donor × cell type ×
  condition with σ_w per cell type moderated across genes, Satterthwaite t tests), batched VEB
- :func:`fit_nuts`: NUTS (pyro) with R-hat and ESS; :func:`fit_nb_nuts`: the NB GLMM of one
  gene by NUTS, with a prior on θ (:class:`NBNUTSResult`)
- :func:`fit_genes`, :func:`agreement`: batched fit of many genes, tidy table
- :func:`pseudobulk`: counts summed per donor × cell type × condition (AnnData in, AnnData out)
- :func:`fit_glmmtmb`, :func:`fit_edger`, :func:`fit_deseq2`, :func:`fit_limma_voom`, :func:`fit_glmgampoi`,
  :func:`r_package_available`: live R references (glmmTMB NB GLMM; pseudobulk edgeR QL, DESeq2,
  limma-voom, glmGamPoi); :func:`fit_pydeseq2`, :func:`wilcoxon_de`: Python references
- :func:`fit_f_dist`, :func:`squeeze_var`, :func:`dispersion_trend`, :func:`ash_normal`: what the NB GLMM
  shares across genes; :func:`satterthwaite_df`: its tests' degrees of freedom
- :func:`thin_de`, :func:`split_donors`, :func:`paired_fake_conditions`: semi-synthetic DE and nulls on
  real cells; :func:`null_calibration`, :func:`power_fdr`, :func:`roc_pr`, :func:`qq_points`: evaluation;
  :func:`calibration_band`, :func:`split_se`, :func:`calibration_check`, :func:`calibration_verdict`: the band a
  calibrated share of p < 0.05 lies in, and each share against it
- :func:`fit_lme4`, :func:`lme4_available`, :func:`r_versions`: lme4 ``glmer`` through ``Rscript``
- :func:`tidy_effects`: the shared tidy table (effects and condition contrasts)
- :func:`compare_to_reference`, :func:`simulate_from_fit`, :func:`calibration_table`,
  :func:`interval_coverage`: sd ratios against lme4 and coverage on simulated data
- :func:`effects_vs_reference`: a tidy table matched term by term to a reference's, with
  interval half-widths (what :func:`scnotes.pl.effects_vs_reference` draws)

The AnnData front is :func:`scnotes.tl.glmm`.
"""
from ._batched import agreement, fit_genes
from ._calibration import calibration_table, compare_to_reference, interval_coverage, simulate_from_fit
from ._compare import effects_vs_reference
from ._contrasts import contrast_variance_shares, residual_df, satterthwaite_df
from ._design import (GLMMData, GLMMDesign, SufficientStats, code_covariates, complete_cell_types, glmm_data,
                      glmm_data_from_adata)
from ._lme4 import INSTALL_HINT, Lme4Result, fit_lme4, lme4_available, r_versions
from ._lmm import fit_lmm, gls_fixed_effects, lmm_marginal_loglik, random_effects_posterior
from ._evaluate import (calibration_band, calibration_check, calibration_verdict, null_calibration, p_qq_points,
                        power_fdr, qq_points, roc_pr, split_se)
from ._nb import NBGLMMVEB, fit_genes_nb, fit_nb_veb
from ._moderate import ash_normal, dispersion_trend, fit_f_dist, squeeze_var, t_matched_sd
from ._nb_nuts import NBNUTSResult, fit_nb_nuts
from ._nuts import NUTSResult, fit_nuts
from ._pseudobulk import pseudobulk
from ._pyrefs import PYDESEQ2_INSTALL_HINT, fit_pydeseq2, pydeseq2_available, wilcoxon_de
from ._simulate import paired_fake_conditions, simulate_nb_glmm, split_donor_designs, split_donors, thin_de
from ._rrefs import (R_INSTALL_HINTS, GlmmTMBResult, fit_deseq2, fit_edger, fit_glmgampoi, fit_glmmtmb,
                     fit_limma_voom,
                     r_package_available)
from ._tidy import TIDY_COLUMNS, bh_qvalues, tidy_effects
from ._veb import PoissonGLMMVEB, fit_veb

__all__ = ["GLMMData", "GLMMDesign", "SufficientStats", "glmm_data", "glmm_data_from_adata",
           "complete_cell_types", "gls_fixed_effects", "random_effects_posterior", "lmm_marginal_loglik", "fit_lmm",
           "PoissonGLMMVEB", "fit_veb", "fit_nuts", "NUTSResult", "fit_nb_nuts", "NBNUTSResult", "fit_genes", "agreement",
           "fit_lme4", "lme4_available", "Lme4Result", "INSTALL_HINT", "r_versions",
           "tidy_effects", "TIDY_COLUMNS", "compare_to_reference", "effects_vs_reference", "simulate_from_fit",
           "calibration_table", "interval_coverage", "NBGLMMVEB", "fit_nb_veb", "fit_genes_nb",
           "simulate_nb_glmm", "bh_qvalues", "pseudobulk", "fit_glmmtmb", "fit_edger", "fit_deseq2",
           "GlmmTMBResult", "r_package_available", "R_INSTALL_HINTS", "code_covariates", "residual_df",
           "satterthwaite_df", "contrast_variance_shares", "fit_f_dist", "squeeze_var", "dispersion_trend",
           "ash_normal", "t_matched_sd", "thin_de", "split_donors", "split_donor_designs", "paired_fake_conditions",
           "null_calibration", "calibration_band", "split_se", "calibration_check", "calibration_verdict",
           "power_fdr", "roc_pr", "qq_points", "p_qq_points", "fit_limma_voom",
           "fit_glmgampoi", "fit_pydeseq2", "wilcoxon_de", "pydeseq2_available", "PYDESEQ2_INSTALL_HINT"]
