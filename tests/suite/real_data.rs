//! Tests on ../shared/data. Each skips with a printed reason when it is absent.

use candle_core::Device;
use multigate::backend::candle::CandleModel;
use multigate::data::{self, csv_source::read_csv, Need};
use multigate::ir::DataSource;
use multigate::train::{self, metrics::TaskMetrics};

use super::{compile_path, repo, shared_data};

#[test]
fn census_paper_split_is_the_documented_one() {
    let Some(root) = shared_data("census split check") else { return };
    use std::io::BufRead;
    let read = |p: &str| -> Vec<String> {
        let f = std::fs::File::open(root.join("census-income-kdd").join(p)).unwrap();
        std::io::BufReader::new(flate2::read::MultiGzDecoder::new(f)).lines().map(|l| l.unwrap()).collect()
    };
    let test = read("census-income.test.gz");
    let (val, held) = (read("paper-split/validation.gz"), read("paper-split/test.gz"));
    assert_eq!((test.len(), val.len(), held.len()), (99_762, 49_881, 49_881));
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.sort_by_key(|&i| multigate::rng::splitmix64(i as u64));
    let (mut v, mut t) = (order[..49_881].to_vec(), order[49_881..].to_vec());
    v.sort_unstable();
    t.sort_unstable();
    assert_eq!(&v[..5], &[3, 4, 5, 7, 10]);
    assert_eq!(&t[..5], &[0, 1, 2, 6, 8]);
    assert_eq!(val[0], test[v[0]]);
    assert_eq!(held[49_880], test[t[49_880]]);
}

#[test]
fn census_mmoe_reaches_the_papers_auc() {
    let Some(_) = shared_data("census MMoE training") else { return };
    let mut c = compile_path(&repo().join("models/census_income_mmoe.toml"));
    c.train.epochs = 2;
    let (splits, _) = data::load_splits(&c.model, &c.data, None, &|n: &Need| n.reader.clone()).unwrap();
    assert_eq!((splits.train.rows, splits.validation.rows), (199_523, 49_881));
    let model = CandleModel::new(&c.model, c.train.seed, &Device::Cpu).unwrap();
    let report = train::fit(&model, &c.train, &splits, &mut |_| {}).unwrap();
    let test = report.test.unwrap();
    let auc = |m: &TaskMetrics| match m {
        TaskMetrics::Binary(b) => b.auc.unwrap(),
        _ => panic!("binary"),
    };
    // Paper (MMoE, group 1): about 0.94 income, 0.993 never-married, after full training.
    assert!(auc(&test[0]) > 0.93, "income test AUC {}", auc(&test[0]));
    assert!(auc(&test[1]) > 0.99, "marital test AUC {}", auc(&test[1]));
}

#[test]
fn samples_parse_through_the_pipeline() {
    let Some(root) = shared_data("sample parsing") else { return };
    // The seed model's features read the Avazu sample.
    let c = compile_path(&repo().join("models/seed_avazu_mmoe.toml"));
    let fmt = multigate::ir::CsvFormat {
        delimiter: b',',
        header: true,
        columns: vec![],
        missing: None,
        skip_bad_rows: false,
    };
    let frame =
        read_csv(&root.join("samples/avazu_sample.txt"), &fmt, &data::needs(&c.model), true, &|_| String::new())
            .unwrap();
    let ds = data::encode(&c.model, &frame, true).unwrap();
    assert_eq!(ds.rows, 100);
    assert_eq!(ds.cat.len(), 11);
    // The census sample (first field: the original row index) reads with the census spec's columns.
    let census = compile_path(&repo().join("models/census_income_mmoe.toml"));
    let DataSource::Csv(csv) = &census.data.source else { panic!("csv") };
    let mut format = csv.format.clone();
    format.columns.insert(0, "row".into());
    let frame =
        read_csv(&root.join("samples/census-income.sample"), &format, &data::needs(&census.model), true, &|_| {
            String::new()
        })
        .unwrap();
    let ds = data::encode(&census.model, &frame, true).unwrap();
    assert_eq!(ds.rows, 200);
    assert!(ds.labels[1].contains(&1.0) && ds.labels[1].contains(&0.0));
}

#[test]
fn init_on_the_census_training_file_infers_the_hand_written_roles_and_trains() {
    let Some(root) = shared_data("init on census") else { return };
    let census = root.join("census-income-kdd");
    let hand = std::fs::read_to_string(repo().join("models/census_income_mmoe.toml")).unwrap();
    let list = &hand[hand.find("columns = [").unwrap()..];
    let list = &list[..list.find(']').unwrap()];
    let columns: Vec<String> = list.split('"').skip(1).step_by(2).map(str::to_string).collect();
    assert_eq!(columns.len(), 42);
    let dir = tempfile::tempdir().unwrap();
    let opts = multigate::init::InitOptions {
        data: census.join("census-income.data.gz"),
        labels: vec![("income_50k".into(), None), ("marital_stat".into(), Some("Never married".into()))],
        ignore: vec!["instance_weight".into(), "education".into()],
        columns,
        delimiter: b',',
        validation: Some(census.join("paper-split/validation.gz")),
        test: None,
        spec_dir: dir.path().to_path_buf(),
        name: "census_init".into(),
    };
    let (text, roles) = multigate::init::init(&opts).unwrap();
    let role = |c: &str| roles.iter().find(|r| r.column == c).map(|r| r.role.clone()).unwrap_or_default();
    assert!(role("age").starts_with("dense, zscore"), "{roles:?}");
    assert!(role("capital_gains").starts_with("dense, log1p"), "{roles:?}");
    assert!(role("det_ind_code").starts_with("categorical, 52 distinct"), "{roles:?}");
    assert!(role("income_50k").contains("positive `50000+.`"), "{roles:?}");
    // It trains: one epoch already separates incomes.
    let spec = dir.path().join("census_init.toml");
    std::fs::write(&spec, &text).unwrap();
    let src = multigate::source::SourceFile::read(&spec).unwrap();
    let c = multigate::pipeline::compile_source(&src).unwrap_or_else(|e| panic!("{}", e.render(Some(&src), false)));
    let mut opts = multigate::run::TrainOptions::default();
    opts.out = Some(dir.path().join("run"));
    opts.epochs = Some(1);
    let done = multigate::run::train_spec(&src, c, &opts, &mut multigate::run::Silent).unwrap();
    let TaskMetrics::Binary(m) = &done.report.validation[0] else { panic!("binary") };
    assert!(m.auc.is_some_and(|a| a > 0.93), "income validation AUC {:?}", m.auc);
}
