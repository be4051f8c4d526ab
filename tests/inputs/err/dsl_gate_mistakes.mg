// Gate setting mistakes in the DSL.
model m {
  feature x: dense(width = 4)
  layer cgc { experts 2 x [8] task_experts(ctr = 1) gate(top_k = 3, temperature = -1) }
  layer cgc { experts 2 x [8] gate(noise = true, balance = 0.1) }
  task ctr: binary(label = click)
  task cvr: binary(label = buy)
}
