"""timm's own training script (train.py) on AttendNets: import attendnets (which registers our models with timm),
then run train.py as its command line would.

train.py ships in timm's repository, not in the timm wheel or source distribution; take the one of the
installed timm version and name it in TIMM_TRAIN:

    git clone --depth 1 --branch "v$(python -c 'import timm; print(timm.__version__)')" \
        https://github.com/huggingface/pytorch-image-models timm-src
    TIMM_TRAIN=timm-src/train.py python examples/timm_train.py DATA --model attendnet_b --num-classes 10 \
        --input-size 3 128 128 --drop-path 0.05 --model-ema --grad-checkpointing

Every option is train.py's; ``--model attendnet --model-kwargs spec=my_design.json`` trains any spec, and
``--pretrained --pretrained-path runs/b/best.safetensors`` starts from one of our checkpoints (train.py gives
it a new classifier).
"""

import os
import runpy
import sys

import attendnets  # noqa: F401  (registers attendnet_a, attendnet_b and attendnet when train.py imports timm)

if "TIMM_TRAIN" not in os.environ:
    sys.exit(__doc__)
runpy.run_path(os.environ["TIMM_TRAIN"], run_name="__main__")
