"""Pure networks: ``nn.Module`` s that map tensors to tensors and know nothing of training.

Each network lives in its own module and is re-exported here with one line.
"""

from hazematching.nets.discriminator import PatchDiscriminator as PatchDiscriminator
from hazematching.nets.lvae import LadderVAE as LadderVAE
from hazematching.nets.mimo_unet import MIMOUNet as MIMOUNet
from hazematching.nets.mprnet import MPRNet as MPRNet
from hazematching.nets.rcan import RCAN as RCAN
from hazematching.nets.restormer import Restormer as Restormer
from hazematching.nets.rrdb import RRDBNet as RRDBNet
from hazematching.nets.unet import UNet as UNet
