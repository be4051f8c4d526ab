"""PyTorch's side of scripts/bench_census.sh: the census models of scripts/census_spec.sh
(31 hashed categoricals of 1000 x 8 in one table with offsets, 7 dense inputs, two binary
tasks, towers of 8) as PyTorch's fastest CPU configuration writes them: fused experts
(one Linear of all experts), a bmm mixture, fused Adam lr 1e-3. Random inputs and labels;
prints one line starting with RESULT.

  python torch_census.py --model mmoe --threads 2 --batch 1024
  models: shared_bottom (128 units), omoe and mmoe (8 experts x 16), cgc (4 shared + 2 per task x 16)
"""
import argparse, time
import torch, torch.nn as nn, torch.nn.functional as Fn

p = argparse.ArgumentParser()
p.add_argument("--model", default="mmoe", choices=["shared_bottom", "omoe", "mmoe", "cgc"])
p.add_argument("--threads", type=int, default=2)
p.add_argument("--batch", type=int, default=1024)
p.add_argument("--steps", type=int, default=200)
p.add_argument("--warmup", type=int, default=20)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)
F, V, E, D, T, TH, B = 31, 1000, 8, 7, 2, 8, a.batch
IN = F * E + D

class Census(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(F * V, E)
        self.offsets = torch.arange(F) * V
        if a.model == "shared_bottom":
            self.bottom, width = nn.Linear(IN, 128), 128
        else:
            shared, own = (4, 2) if a.model == "cgc" else (8, 0)
            self.shared, self.own, width = shared, own, 16
            self.experts = nn.Linear(IN, (shared + T * own) * 16)
            gates = 1 if a.model == "omoe" else T
            self.gates = nn.Linear(IN, gates * (shared + own))
        self.towers = nn.ModuleList(nn.Sequential(nn.Linear(width, TH), nn.ReLU(), nn.Linear(TH, 1)) for _ in range(T))

    def forward(self, ids, dense):
        n = ids.shape[0]
        x = torch.cat([self.emb(ids + self.offsets).reshape(n, F * E), dense], 1)
        if a.model == "shared_bottom":
            h = torch.relu(self.bottom(x))
            ins = [h] * T
        else:
            ex = torch.relu(self.experts(x)).view(n, -1, 16)  # [n, shared + T*own, 16]
            k = self.shared + self.own
            g = torch.softmax(self.gates(x).view(n, -1, k), -1)  # [n, gates, k]
            if a.model == "omoe":
                mixed = torch.bmm(g, ex)  # [n, 1, 16]
                ins = [mixed[:, 0]] * T
            elif a.model == "mmoe":
                mixed = torch.bmm(g, ex)
                ins = [mixed[:, t] for t in range(T)]
            else:  # cgc: each task's gate mixes the shared experts and its own
                sh = ex[:, : self.shared]
                ins = []
                for t in range(T):
                    mine = ex[:, self.shared + t * self.own : self.shared + (t + 1) * self.own]
                    ins.append(torch.bmm(g[:, t : t + 1], torch.cat([sh, mine], 1))[:, 0])
        return torch.cat([tw(h) for tw, h in zip(self.towers, ins)], 1)

m = Census()
opt = torch.optim.Adam(m.parameters(), lr=1e-3, fused=True)
nb = 8
data = [(torch.randint(0, V, (B, F)), torch.randn(B, D), (torch.rand(B, T) < 0.3).float()) for _ in range(nb)]
for s in range(a.warmup + a.steps):
    if s == a.warmup:
        t0 = time.perf_counter()
    ids, dense, y = data[s % nb]
    loss = Fn.binary_cross_entropy_with_logits(m(ids, dense), y, reduction="none").sum(1).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
el = time.perf_counter() - t0
params = sum(q.numel() for q in m.parameters())
print(f"RESULT torch {torch.__version__} census {a.model} threads={a.threads} batch={B} params={params} samples/s={a.steps * B / el:.0f}")
