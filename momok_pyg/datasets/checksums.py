r"""SHA-256 checksums and sizes of the upstream raw benchmark files.

Every file is pinned to zjukg/MoMoK at commit :obj:`UPSTREAM_COMMIT`, folder
``datasets/<folder>/``. A raw file is only ever used after its size and SHA-256 match.
"""
from typing import Dict, Tuple

UPSTREAM_REPO = "zjukg/MoMoK"
UPSTREAM_COMMIT = "99c2df114d48c79708ea0608644b685183d81bd9"
DEFAULT_BASE_URL = (f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}"
                    "/datasets")

#: ``CHECKSUMS[folder][file] = (size in bytes, sha256 hex digest)``
CHECKSUMS: Dict[str, Dict[str, Tuple[int, str]]] = {
    "DB15K": {
        "entity2id.txt": (674485, "e1e257f5850d0a3440a7020dc5c8af77664a60b69fa1869c45c2f20b8024020e"),
        "relation2id.txt": (12587, "bb002b2069d740a545dfa526c31bcd487aff0a5203db786f278e363c714f24ea"),
        "test.txt": (1335480, "6c437beaaa65de21f910b447d0c02a5b3aac75ba91de9017eb72cf8495a2260f"),
        "train.txt": (10684015, "0a9e724d71372f23432e5370e62bd8f94f6d37882be955deca460014d3f6e23c"),
        "valid.txt": (1355449, "73e936ee24e11bd0fd31630a573ea3801da930c7fb6a7397ce0fed47f6f7f133"),
    },
    "Kuai16K": {
        "entity2id.txt": (247079, "7f65e608f23480e5dc0cb81230f2a948e1f42ff2ffd71b3328b0e9978b63472d"),
        "relation2id.txt": (16, "f64081447d516d225669e1c018ee4377ad966243eff795952ae9cfb823511aa3"),
        "test.txt": (509198, "0a7ec0e44221348858af5bfd4fa9775bd86f5b5395c90e306133b3758efc7d4a"),
        "train.txt": (4074788, "ebb91ee9d8a90cdfb58e06353ae2bf22f2086a477cd863a3945cfc289ea366aa"),
        "valid.txt": (509117, "b7f07994c9f27d604e4f50149dbff63bea54cdf560e31507a8d2dfa4a36d56db"),
    },
    "MKG-W": {
        "entity2id.txt": (672258, "805e2e9a9a8fff032e2caa17233d8ceaaf2356221c66d6ad3c17d31292d360f5"),
        "relation2id.txt": (6652, "7035491ec0b2865e1220ec9491aafbcf3ff3d6c797816a0129735e0be9f2ea29"),
        "test.txt": (494417, "f0cfb7b5091d8601d0298889533e4f128237a700207b5739d27c0d81152f8245"),
        "train.txt": (3956175, "66187e7d882a654915d8048897916ca8c5798e9c7df3a5b8ba8fab5d231cafcd"),
        "valid.txt": (494720, "6840322036c394af6ab33be5c4f988edafbd48d61fdc9e3b9b485c42e6f5a2da"),
    },
    "MKG-Y": {
        "entity2id.txt": (348201, "ca7c45833c5454545e4ffbeb1e7dde6c5ff2548d6688c91ad44effc9d1095d06"),
        "relation2id.txt": (388, "584d45c33a0d1003a28d08ee17507e8da21f3809491f1d511549a0287bdf8dcb"),
        "test.txt": (125073, "618b1a1ba2a1880e9cf0f56ae920b589df59a859442d4f1ff32a4e632c25bc4b"),
        "train.txt": (1003671, "3be3e886268cade513b35429d7aa5e145f51692c2f2bedbd7ff7d60a7a6c263e"),
        "valid.txt": (125067, "bcc01dbedd4c25f87481ca47b00724a1de1808ec098d80e27fec595c13c8bae4"),
    },
}
