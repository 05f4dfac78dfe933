"""Train, validate, test or predict with uattr from YAML configs (LightningCLI).

python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml
python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml \
    --config configs/trainer/ddp_cpu.yaml
python train.py fit --config configs/mnist5k_lenet_mcdropout.yaml --print_config
"""

from uattr.cli import UattrCLI


def main() -> None:
    UattrCLI()


if __name__ == "__main__":
    main()
