fn main() {
    eprintln!("gyrectl: not built yet");
    std::process::exit(1);
}
