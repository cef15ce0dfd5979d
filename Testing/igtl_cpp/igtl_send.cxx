// Sends RF frames as OpenIGTLink IMAGE messages with the C++ reference library (the one Slicer
// and PLUS use): header version 1, no extended header, for Testing/test_igtl_interop.py.
//
//   igtl_send FRAMES_FILE FRAMES ROWS COLUMNS float32|int16 little|big LATERAL_MM AXIAL_MM X_MM Y_MM
//
// FRAMES_FILE holds FRAMES frames of ROWS x COLUMNS samples, row-major, in this machine's byte
// order. Serves on a free port (prints "listening PORT"), waits for one client and sends device
// "RF" frames in a loop at about 50 Hz until the client leaves or the process is terminated.
// The library never converts scalars: the samples are put in the byte order asked for here
// (swapped when it is not this machine's) and the message is flagged with it. Geometry: i along
// the columns (lateral), j along the rows (axial); pixel (0, 0) at (X_MM, Y_MM, 0), so the image
// position the library sends (the centre of the image) is that point plus half the extent of
// the pixel grid.

#include <igtlImageMessage.h>
#include <igtlOSUtil.h>
#include <igtlServerSocket.h>
#include <igtl_types.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char* argv[]) {
  if (argc != 11) {
    std::cerr << "usage: " << argv[0]
              << " FRAMES_FILE FRAMES ROWS COLUMNS float32|int16 little|big LATERAL_MM AXIAL_MM X_MM Y_MM" << std::endl;
    return 2;
  }
  const int frames = std::atoi(argv[2]), rows = std::atoi(argv[3]), columns = std::atoi(argv[4]);
  const bool float32 = std::string(argv[5]) == "float32";
  const bool big = std::string(argv[6]) == "big";
  const float lateral = std::atof(argv[7]), axial = std::atof(argv[8]);
  const float x = std::atof(argv[9]), y = std::atof(argv[10]);
  const int sample_bytes = float32 ? 4 : 2;
  const std::size_t frame_bytes = static_cast<std::size_t>(rows) * columns * sample_bytes;

  std::vector<char> data(frame_bytes * frames);
  std::ifstream(argv[1], std::ios::binary).read(&data[0], data.size());
  const igtl_uint16 probe = 1;
  const bool machine_big = *reinterpret_cast<const unsigned char*>(&probe) == 0;
  if (big != machine_big) {
    for (std::size_t k = 0; k < data.size(); k += sample_bytes) {
      std::reverse(&data[k], &data[k] + sample_bytes);
    }
  }

  igtl::ServerSocket::Pointer server = igtl::ServerSocket::New();
  if (server->CreateServer(0) < 0) {
    std::cerr << "cannot create a server socket" << std::endl;
    return 2;
  }
  std::cout << "listening " << server->GetServerPort() << std::endl;
  igtl::ClientSocket::Pointer client;
  while (!client) {
    client = server->WaitForConnection(1000);
  }
  for (int k = 0;; ++k) {
    igtl::ImageMessage::Pointer image = igtl::ImageMessage::New();
    image->SetDeviceName("RF");
    image->SetDimensions(columns, rows, 1);
    image->SetSpacing(lateral, axial, 1.0f);
    image->SetOrigin(x + 0.5f * (columns - 1) * lateral, y + 0.5f * (rows - 1) * axial, 0.0f);
    image->SetScalarType(float32 ? igtl::ImageMessage::TYPE_FLOAT32 : igtl::ImageMessage::TYPE_INT16);
    image->SetEndian(big ? igtl::ImageMessage::ENDIAN_BIG : igtl::ImageMessage::ENDIAN_LITTLE);
    image->AllocateScalars();
    std::memcpy(image->GetScalarPointer(), &data[(k % frames) * frame_bytes], frame_bytes);
    image->Pack();
    if (client->Send(image->GetPackPointer(), image->GetPackSize()) == 0) {
      return 0;  // the client left
    }
    igtl::Sleep(20);
  }
}
