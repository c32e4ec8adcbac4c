"""The dependency set installs together: numpy < 2 (for laion-clap) with torch, faiss and pyarrow."""

import subprocess
import sys


def test_torch_faiss_pyarrow_import_in_one_process():
    code = (
        "import torch, faiss, pyarrow as pa, numpy as np;"
        "x = torch.nn.functional.normalize(torch.randn(50, 8), dim=1).numpy();"
        "ix = faiss.IndexFlatIP(8); ix.add(x);"
        "D, I = ix.search(x[:3], 1);"
        "t = pa.table({'v': pa.array(x[:, 0])});"
        "assert (I[:, 0] == [0, 1, 2]).all(), I;"
        "assert t.column('v').to_numpy().dtype == np.float32;"
        "print(np.__version__, pa.__version__, faiss.__version__, torch.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    numpy_version = out.stdout.split()[0]
    assert int(numpy_version.split(".")[0]) < 2, "laion-clap 1.1.7 needs numpy < 2"
