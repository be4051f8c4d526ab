// CGC / PLE mistakes in the DSL: every one reported, each at its line.
model m {
  feature x: dense(width = 4)
  layer mmoe { experts 2 x [8] task_experts 2 }
  layer cgc { experts 0 x [8] task_experts(ctr = 1, cvrr = 2) }
  task ctr: binary(label = click)
  task cvr: binary(label = buy)
}
