# Every construct of the DSL, with comments of both kinds and trailing commas.
model everything {
  data csv(
    train = ["a.csv", "b.csv.gz",],
    validation = "v.csv",
    delimiter = "\t",
    missing = "?",
  )
  feature age: dense(transform = zscore, mean = 35, std = 12.5, fill = 35)  // z-scored
  feature gain: dense(transform = log1p) column "capital_gains"
  feature emb: dense(width = 4)
  feature city: categorical(hash = 1000) embed 8
  feature sex: categorical(vocab = ["Male", "Female",]) embed 8
  cross city_x_sex = product(city, sex,)
  layer bottom: shared_bottom { units [64, 32] activation gelu }
  layer mmoe { experts 4 x [16, 8] tanh dropout 0.1 }
  layer moe { experts 2 x [8] }
  task income: binary(label = income_50k == "50000+.") tower [8] relu dropout 0.2 weight 2.0
  task hours: regression(label = "hours per week") input bottom tower [4, 4] activation tanh
  train {
    adam(lr = 3e-3, beta1 = 0.85, weight_decay = 1e-4)
    decay(rate = 0.5, epochs = 2)
    batch 1024 epochs 3 seed 7
  }
}
