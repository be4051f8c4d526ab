// Unknown keys are reported together, each with a did-you-mean.
model m {
  data csv(trian = ["t.csv"], header = false, colums = ["a", "click"])
  feature a: categorical(hash = 100, embedd = 4)
  task ctr: binary(label = click) tower [4]
  train { adam(lr = 0.01, betta1 = 0.8) batch 64 }
}
