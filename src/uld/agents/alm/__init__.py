"""ALM, Aligned Latent Models (Ghugare et al., ICLR 2023), as specified in spec/ALM.md."""
