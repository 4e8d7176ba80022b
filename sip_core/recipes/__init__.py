"""One file per training method (torchtune style); each runs under `python -m` or `torchrun -m`:

    torchrun --nproc-per-node 2 -m sip_core.recipes.pretrain --config configs/tiny.yaml --chunks URI
"""
