"""Build hook: ship the import-hook .pth file and the model card template.

setup.cfg holds all metadata. This file exists only because a .pth file must
sit at the top of site-packages, and the model card template lives in
weights_card/ at the repository root; setuptools' declarative config can put
neither there.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
PTH_FILE = "hydranet_hub_autoregister.pth"


class BuildPyWithHook(build_py):
    def run(self):
        super().run()
        build_lib = Path(self.build_lib)
        shutil.copy2(ROOT / PTH_FILE, build_lib / PTH_FILE)
        card_dir = build_lib / "hydranet_hub" / "weights_card"
        card_dir.mkdir(parents=True, exist_ok=True)
        for template in (ROOT / "weights_card").iterdir():
            if template.is_file():
                shutil.copy2(template, card_dir / template.name)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        outputs.append(str(Path(self.build_lib) / PTH_FILE))
        return outputs


setup(cmdclass={"build_py": BuildPyWithHook})
