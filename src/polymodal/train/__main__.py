"""`python -m polymodal.train CONFIG.yaml …` (the entry `accelerate launch -m` and `torchrun -m` use)."""
from polymodal.train.cli import main

main()
