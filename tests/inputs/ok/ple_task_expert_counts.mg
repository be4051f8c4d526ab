// PLE with per-task expert counts: ctr keeps 3 experts of its own at level 1, cvr 1;
// level 2 gives every task 2. A tower reads the first level.
model ple {
  feature a: categorical(hash = 100) embed 8
  feature d: dense(width = 3)
  layer l1: cgc { experts 2 x [16, 8] tanh task_experts(ctr = 3, cvr = 1) dropout 0.1 }
  layer l2: cgc { experts 2 x [8] task_experts 2 }
  task ctr: binary(label = click) tower [4]
  task cvr: binary(label = buy) tower [4] input l1
}
