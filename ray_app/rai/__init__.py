"""Responsible AI: the bias audit of the wiki biographies (annotation, exposure, counterfactual answers),
fairness metrics per group, the exposure-aware re-ranking mitigation and the generated RAI report."""
