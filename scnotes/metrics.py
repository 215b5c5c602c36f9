"""Integration and clustering metrics (iLISI/cLISI, silhouette, ARI)."""
