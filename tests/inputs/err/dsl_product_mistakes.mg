// ESMM product and head mistakes in the DSL: every one reported, each at its line.
model m {
  feature x: dense
  task ctr: binary(label = click)
  task dwell: regression(label = seconds, transform = log2)
  task ctcvr: binary(label = buy) product(ctr, ctcvr) tower [4]
  task twice: binary(label = buy) product(ctr, ctr)
  task mixed: binary(label = buy) product(ctr, dwell)
  task kinds: multiclass(label = k, classes = ["a", "a"], mean = 3)
}
