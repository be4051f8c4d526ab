model m {
  feature a: categorical(hash = 100)
  task income: binary(label = income_50k)
  task hours: regression(label = hours)
  train { adam batch 64 select income.mse }
}
